"""Pure ledger logic: expiry dates, request fingerprints, history cursors."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty.errors import InvalidInput
from loyalty.ledger import core, service
from loyalty.ledger import schemas as s

SHANGHAI = ZoneInfo("Asia/Shanghai")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(tz: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=tz)  # type: ignore[misc]


# --- ExpiryPolicy -----------------------------------------------------------------------------


def test_no_expiry() -> None:
    assert core.ExpiryPolicy().expires_at(utc(2026, 1, 1)) is None
    assert core.ExpiryPolicy(None, "month").expires_at(utc(2026, 1, 1), "Asia/Shanghai") is None


def test_plain_days_keep_the_time_of_day() -> None:
    assert core.ExpiryPolicy(30).expires_at(utc(2026, 1, 15, 10, 30)) == utc(2026, 2, 14, 10, 30)
    assert core.ExpiryPolicy(30).expires_at(utc(2026, 1, 15, 10, 30), "Asia/Shanghai") == utc(
        2026, 2, 14, 10, 30
    )


def test_plain_days_count_local_days_across_a_dst_change() -> None:
    # Berlin springs forward on 2026-03-29: one local day later is 23 hours later.
    earned = local(ZoneInfo("Europe/Berlin"), 2026, 3, 28, 12, 0)
    expires = core.ExpiryPolicy(1).expires_at(earned, "Europe/Berlin")
    assert expires == local(ZoneInfo("Europe/Berlin"), 2026, 3, 29, 12, 0)
    assert expires is not None and expires - earned == timedelta(hours=23)


@pytest.mark.parametrize(
    ("earned", "days", "round_to", "expected_local"),
    [
        # 2024-01-31 20:00 UTC is already 1 February in Shanghai: +30 days is 2 March -> end of March.
        (utc(2024, 1, 31, 20), 30, "month", local(SHANGHAI, 2024, 4, 1)),
        # Leap year: 30 January + 30 days is 29 February, the month's last day.
        (local(SHANGHAI, 2024, 1, 30, 9), 30, "month", local(SHANGHAI, 2024, 3, 1)),
        # Not a leap year: the same dates land on 1 March, so the points live to the end of March.
        (local(SHANGHAI, 2023, 1, 30, 9), 30, "month", local(SHANGHAI, 2023, 4, 1)),
        (local(SHANGHAI, 2026, 5, 10, 9), 10, "quarter", local(SHANGHAI, 2026, 7, 1)),
        (local(SHANGHAI, 2026, 9, 25, 9), 10, "quarter", local(SHANGHAI, 2027, 1, 1)),
        (local(SHANGHAI, 2026, 2, 1, 9), 1, "quarter", local(SHANGHAI, 2026, 4, 1)),
        # New Year's Eve in UTC is already New Year's Day in Shanghai: the year rounds to 2025's end.
        (utc(2024, 12, 31, 17), 1, "year", local(SHANGHAI, 2026, 1, 1)),
        (local(SHANGHAI, 2024, 12, 30, 9), 1, "year", local(SHANGHAI, 2025, 1, 1)),
        (local(SHANGHAI, 2024, 2, 29, 9), 365, "year", local(SHANGHAI, 2026, 1, 1)),
    ],
)
def test_rounded_expiry_is_the_start_of_the_day_after_the_period_ends(
    earned: datetime, days: int, round_to: core.Rounding, expected_local: datetime
) -> None:
    expires = core.ExpiryPolicy(days, round_to).expires_at(earned, "Asia/Shanghai")

    assert expires == expected_local
    assert expires is not None and expires.tzinfo is UTC


def test_rounding_depends_on_the_programme_time_zone() -> None:
    earned = utc(2024, 12, 31, 17)  # 1 January 2025, 01:00 in Shanghai
    policy = core.ExpiryPolicy(1, "year")
    assert policy.expires_at(earned, "UTC") == utc(2026, 1, 1)
    assert policy.expires_at(earned, "Asia/Shanghai") == utc(2025, 12, 31, 16)


@pytest.mark.parametrize(
    ("day", "round_to", "end"),
    [
        (date(2024, 2, 10), "month", date(2024, 2, 29)),
        (date(2023, 2, 10), "month", date(2023, 2, 28)),
        (date(2100, 2, 10), "month", date(2100, 2, 28)),  # divisible by 100: not a leap year
        (date(2000, 2, 10), "month", date(2000, 2, 29)),  # divisible by 400: a leap year
        (date(2026, 11, 30), "quarter", date(2026, 12, 31)),
        (date(2026, 4, 1), "quarter", date(2026, 6, 30)),
        (date(2026, 7, 4), "year", date(2026, 12, 31)),
        (date(2026, 7, 4), "none", date(2026, 7, 4)),
    ],
)
def test_period_end(day: date, round_to: core.Rounding, end: date) -> None:
    assert core.period_end(day, round_to) == end


instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 12, 31), timezones=st.just(UTC)
)
zones = st.sampled_from(["UTC", "Asia/Shanghai", "Europe/Berlin", "America/New_York", "Pacific/Kiritimati"])
roundings = st.sampled_from(["month", "quarter", "year"])


@given(earned=instants, days=st.integers(1, 3650), round_to=roundings, tz=zones)
def test_rounded_expiry_is_a_local_midnight_no_earlier_than_the_plain_one(
    earned: datetime, days: int, round_to: core.Rounding, tz: str
) -> None:
    plain = core.ExpiryPolicy(days).expires_at(earned, tz)
    rounded = core.ExpiryPolicy(days, round_to).expires_at(earned, tz)
    assert plain is not None and rounded is not None

    assert rounded.astimezone(ZoneInfo(tz)).time() == time(0, 0)
    assert rounded > plain
    assert rounded - plain <= timedelta(days=367)
    # The day before the expiry is the last day of a period.
    last_day = (rounded.astimezone(ZoneInfo(tz)) - timedelta(hours=12)).date()
    assert core.period_end(last_day, round_to) == last_day


@given(
    a=instants,
    b=instants,
    days=st.integers(1, 3650),
    round_to=st.sampled_from(["none", "month", "year"]),
    tz=zones,
)
def test_later_earns_never_expire_sooner(
    a: datetime, b: datetime, days: int, round_to: core.Rounding, tz: str
) -> None:
    first, second = sorted((a, b))
    policy = core.ExpiryPolicy(days, round_to)
    x, y = policy.expires_at(first, tz), policy.expires_at(second, tz)
    assert x is not None and y is not None
    if round_to != "none" or tz == "UTC":  # plain local days can shift by an hour across DST
        assert x <= y


# --- fingerprints -----------------------------------------------------------------------------


def test_fingerprint_is_stable() -> None:
    req = s.SpendRequest(member_id="ann", points=100, reference="order-1")
    same = s.SpendRequest(member_id="ann", points=100, reference="order-1")

    assert core.fingerprint("spend", req) == core.fingerprint("spend", same)
    assert len(core.fingerprint("spend", req)) == 32
    # A known value: a change of encoding would silently turn every stored key into a 409.
    assert core.fingerprint("void:7", None).hex() == __import__("hashlib").sha256(b"void:7\0null").hexdigest()


def test_fingerprint_differs_with_any_field_or_the_operation() -> None:
    base = s.EarnRequest(member_id="ann", budget="main", points=100)
    variants = [
        s.EarnRequest(member_id="bob", budget="main", points=100),
        s.EarnRequest(member_id="ann", budget="other", points=100),
        s.EarnRequest(member_id="ann", budget="main", points=101),
        s.EarnRequest(member_id="ann", budget="main", points=100, allow_partial=True),
        s.EarnRequest(member_id="ann", budget="main", points=100, expiry=s.ExpiryIn(days=30)),
        s.EarnRequest(member_id="ann", budget="main", points=100, metadata={"a": 1}),
    ]
    prints = {core.fingerprint("earn", v) for v in variants}

    assert len(prints) == len(variants)
    assert core.fingerprint("earn", base) not in prints
    assert core.fingerprint("earn", base) != core.fingerprint("earn_batch", base)
    assert core.fingerprint("capture:1", None) != core.fingerprint("capture:2", None)


@given(
    a=st.tuples(st.text(min_size=1, max_size=20), st.integers(1, 10**12), st.none() | st.text(max_size=20)),
    b=st.tuples(st.text(min_size=1, max_size=20), st.integers(1, 10**12), st.none() | st.text(max_size=20)),
)
def test_fingerprints_are_equal_exactly_when_the_requests_are(
    a: tuple[str, int, str | None], b: tuple[str, int, str | None]
) -> None:
    ra = s.SpendRequest(member_id=a[0], points=a[1], reference=a[2])
    rb = s.SpendRequest(member_id=b[0], points=b[1], reference=b[2])
    assert (core.fingerprint("spend", ra) == core.fingerprint("spend", rb)) == (a == b)


# --- cursors ----------------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_cursor_round_trip(txn_id: int) -> None:
    cursor = service.encode_cursor(txn_id)
    assert "=" not in cursor and cursor.isascii()
    assert service.decode_cursor(cursor) == txn_id


@pytest.mark.parametrize("cursor", ["", "!!!", "dDp4", "eDox", "////", "\u00e9t\u00e9"])
def test_foreign_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        service.decode_cursor(cursor)
    assert caught.value.field == "cursor"

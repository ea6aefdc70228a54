"""The audit trail's pure parts: cursors, redaction, what changed, the filter's checks."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty.audit import core
from loyalty.errors import InvalidInput
from loyalty.http.principal import Principal


@given(
    at=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9000, 1, 1), timezones=st.just(UTC)),
    row_id=st.integers(min_value=1, max_value=2**63 - 1),
)
def test_a_cursor_gives_back_its_exact_position(at: datetime, row_id: int) -> None:
    assert core.decode_cursor(core.encode_cursor(at, row_id)) == (at, row_id)


@pytest.mark.parametrize(
    "bad", ["", "x", "YTox", core.encode_cursor(datetime(2026, 1, 1, tzinfo=UTC), 1)[:-3] + "!!!"]
)
def test_a_foreign_cursor_is_invalid_input_naming_cursor(bad: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        core.decode_cursor(bad)
    assert caught.value.field == "cursor"


def test_redaction_reaches_every_depth_and_keeps_the_rest() -> None:
    value = {"a": 1, "secret": "s", "inner": [{"token": "t", "b": [{"password": "p", "c": 2}]}]}
    assert core.redact(value) == {
        "a": 1,
        "secret": core.REDACTED,
        "inner": [{"token": core.REDACTED, "b": [{"password": core.REDACTED, "c": 2}]}],
    }


def test_changed_names_the_top_level_fields_that_differ() -> None:
    assert core.changed({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 4}) == ["b", "c"]
    assert core.changed(None, {"a": 1}) == ["a"]
    assert core.changed({"a": 1}, None) == ["a"]
    assert core.changed(None, None) == []


def test_a_principal_is_recorded_with_its_key_or_operator() -> None:
    key = Principal(programme_id=3, programme_code="p", role="operator", key_id=9)
    person = Principal(programme_id=3, programme_code="p", role="operator", operator_id=4)
    assert core.actor_of(key) == core.Actor(
        programme_id=3, actor="key:9:operator", key_id=9, operator_id=None
    )
    assert core.actor_of(person) == core.Actor(programme_id=3, actor="operator:4", key_id=None, operator_id=4)
    assert core.actor_of("cli", 3).actor == "cli"


@pytest.mark.parametrize(
    ("f", "field"),
    [
        (core.Filter(action="member"), "action"),
        (core.Filter(action="member.nope"), "action"),
        (core.Filter(action="*"), "action"),
        (core.Filter(entity="Member"), "entity"),
        (core.Filter(entity_id="m1"), "entity_id"),
        (core.Filter(since=datetime(2026, 1, 1)), "since"),
        (
            core.Filter(since=datetime(2026, 1, 2, tzinfo=UTC), until=datetime(2026, 1, 1, tzinfo=UTC)),
            "until",
        ),
    ],
)
def test_bad_filters_name_their_field(f: core.Filter, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        f.check()
    assert caught.value.field == field


def test_an_action_prefix_covers_exactly_its_subject() -> None:
    f = core.Filter(action="budget.*").check()
    assert f.action_prefix == "budget."
    assert core.Filter(action="budget.create").check().action_prefix is None


def test_a_form_becomes_a_checked_filter() -> None:
    f = core.parse_filter(
        {"action": " member.* ", "since": "2026-12-01T00:00:00Z", "actor": "", "until": None}
    )
    assert f == core.Filter(action="member.*", since=datetime(2026, 12, 1, tzinfo=UTC))
    for values, field in (
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-12-01"}, "until"),
        ({"action": "member.teleport"}, "action"),
    ):
        with pytest.raises(InvalidInput) as caught:
            core.parse_filter(values)
        assert caught.value.field == field
    assert "member.*" in core.subjects() and all(s.endswith(".*") for s in core.subjects())


def test_docs_list_every_action() -> None:
    from pathlib import Path

    documented = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    assert [a for a in core.ACTIONS if f"| `{a}` |" not in documented] == []

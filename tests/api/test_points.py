"""Earn, spend, adjustments, transfers, batch earns, transactions, history and the liability report."""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, problem
from tests.support import make_programme


def _month_end_expiry(earned: datetime, days: int, tz: str) -> datetime:
    due = (earned.astimezone(ZoneInfo(tz)) + timedelta(days=days)).date()
    last = date(due.year, due.month, calendar.monthrange(due.year, due.month)[1])
    return datetime.combine(last + timedelta(days=1), time.min, ZoneInfo(tz)).astimezone(UTC)


async def test_earn_immediate(api: Api) -> None:
    await api.budget("b", unit_cost_micros=10_000)
    await api.enrol("alice")
    body = await api.earn("alice", 120, "b", reference="order-1", reason="purchase", metadata={"sku": "x"})
    assert body["kind"] == "earn" and body["status"] == "available"
    assert (body["amount"], body["requested"], body["cost_micros"]) == (120, 120, 1_200_000)
    assert body["vests_at"] is None and body["expires_at"] is None
    assert body["reference"] == "order-1" and body["member_id"] == "alice" and body["budget"] == "b"
    assert body["balance"] == {"available": 120, "pending": 0, "held": 0}
    assert await api.balance("alice") == {"available": 120, "pending": 0, "held": 0, "expiring_soon": 0}
    txn = (await api.get(f"/v1/transactions/{body['transaction_id']}", role="crm")).json()
    assert txn["metadata"] == {"sku": "x"} and txn["reason"] == "purchase"


async def test_earn_pending(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    before = datetime.now(UTC)
    body = await api.earn("alice", 80, pending_days=14)
    assert body["status"] == "pending"
    vests = datetime.fromisoformat(body["vests_at"])
    assert before + timedelta(days=14) <= vests <= datetime.now(UTC) + timedelta(days=14)
    assert body["balance"] == {"available": 0, "pending": 80, "held": 0}
    # Pending points cannot be spent.
    r = await api.post("/v1/spend", {"member_id": "alice", "points": 1}, role="ecommerce", expect=None)
    assert problem(r, 422, "insufficient_points")["available"] == 0
    # pending_days 0 means at once.
    assert (await api.earn("alice", 5, pending_days=0))["status"] == "available"


async def test_earn_with_expiry_rounded_to_month_end(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    earned = datetime.now(UTC)
    body = await api.earn("alice", 10, expiry={"days": 40, "round_to": "month"})
    assert datetime.fromisoformat(body["expires_at"]) == _month_end_expiry(earned, 40, "UTC")
    plain = await api.earn("alice", 10, expiry={"days": 3})
    expires = datetime.fromisoformat(plain["expires_at"])
    assert earned + timedelta(days=3) <= expires <= datetime.now(UTC) + timedelta(days=3)
    soon = (await api.get("/v1/members/alice/expiring", params={"days": 5})).json()
    assert soon["total"] == 10 and soon["days"] == 5
    assert [datetime.fromisoformat(i["expires_at"]) for i in soon["items"]] == [expires]
    assert (await api.get("/v1/members/alice/balance", params={"expiring_within_days": 5})).json()[
        "expiring_soon"
    ] == 10


async def test_expiry_rounds_in_the_programme_time_zone(api: Api) -> None:
    await api.patch("/v1/programme", {"timezone": "Asia/Shanghai"})
    await api.budget()
    await api.enrol("alice")
    earned = datetime.now(UTC)
    body = await api.earn("alice", 10, expiry={"days": 1, "round_to": "year"})
    expected = _year_end(earned, "Asia/Shanghai")
    assert datetime.fromisoformat(body["expires_at"]) == expected
    assert expected.astimezone(ZoneInfo("Asia/Shanghai")).time() == time.min


def _year_end(earned: datetime, tz: str) -> datetime:
    due = (earned.astimezone(ZoneInfo(tz)) + timedelta(days=1)).date()
    return datetime.combine(date(due.year + 1, 1, 1), time.min, ZoneInfo(tz)).astimezone(UTC)


async def test_spend_takes_soonest_expiring_lots_first(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    await api.earn("alice", 100, reference="never")
    await api.earn("alice", 100, reference="late", expiry={"days": 200})
    await api.earn("alice", 100, reference="soon", expiry={"days": 20})
    body = await api.spend("alice", 150, reference="basket-1")
    assert body["kind"] == "spend" and body["amount"] == 150
    assert body["balance"] == {"available": 150, "pending": 0, "held": 0}
    assert body["cost_micros"] == 150 * 10_000
    expiring = (await api.get("/v1/members/alice/expiring", params={"days": 366})).json()
    # 'soon' is gone, 'late' lost 50, 'never' (no expiry) is untouched.
    assert expiring["total"] == 50 and [i["points"] for i in expiring["items"]] == [50]
    # A refund of 'never' finds all its points still in its lot.
    claw = await api.clawback("alice", "never")
    assert (claw["from_earned_lots"], claw["from_other_points"], claw["debt"]) == (100, 0, 0)
    # 'soon' was spent first: all of it must come from elsewhere ('late': 50) or become debt.
    claw = await api.clawback("alice", "soon")
    assert (claw["from_earned_lots"], claw["from_other_points"], claw["debt"]) == (0, 50, 50)
    assert claw["balance"]["available"] == -50


async def test_spend_more_than_available_is_422(api: Api) -> None:
    await api.budget()
    await api.member_with("alice", 10)
    r = await api.post("/v1/spend", {"member_id": "alice", "points": 11}, role="ecommerce", expect=None)
    body = problem(r, 422, "insufficient_points")
    assert (body["available"], body["requested"]) == (10, 11)
    assert (await api.balance("alice"))["available"] == 10


async def test_adjustments(api: Api) -> None:
    await api.enrol("alice")
    credit = (
        await api.post(
            "/v1/adjustments",
            {
                "member_id": "alice",
                "points": 50,
                "reason": "goodwill",
                "expiry": {"days": 30},
                "unit_cost_micros": 7,
            },
        )
    ).json()
    assert credit["kind"] == "adjust" and credit["amount"] == 50 and credit["cost_micros"] == 350
    assert credit["reason"] == "goodwill" and credit["expires_at"] is not None
    debit = (
        await api.post("/v1/adjustments", {"member_id": "alice", "points": -20, "reason": "error"})
    ).json()
    assert debit["amount"] == -20 and debit["balance"]["available"] == 30
    r = await api.post("/v1/adjustments", {"member_id": "alice", "points": -31, "reason": "x"}, expect=None)
    assert problem(r, 422, "insufficient_points")["available"] == 30
    assert (await api.balance("alice"))["available"] == 30


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"member_id": "alice", "points": 5}, "reason"),
        ({"member_id": "alice", "points": 5, "reason": ""}, "reason"),
        ({"member_id": "alice", "points": 0, "reason": "x"}, "points"),
        ({"member_id": "alice", "points": -5, "reason": "x", "expiry": {"days": 3}}, "expiry"),
    ],
)
async def test_adjustment_needs_a_reason_and_points(api: Api, body: dict[str, Any], field: str) -> None:
    await api.enrol("alice")
    r = await api.post("/v1/adjustments", body, expect=None)
    b = problem(r, 400)
    assert field in (b.get("field"), *(e["field"] for e in b.get("errors", []))) or field in b["detail"]
    assert (await api.balance("alice"))["available"] == 0


@pytest.mark.parametrize("role", ["ecommerce", "crm", "marketing"])
async def test_only_operators_adjust(api: Api, role: str) -> None:
    await api.enrol("alice")
    r = await api.post(
        "/v1/adjustments", {"member_id": "alice", "points": 5, "reason": "x"}, role=role, expect=None
    )
    problem(r, 403, "role_not_allowed")


async def test_transfer_moves_points_with_their_expiry(api: Api) -> None:
    await api.budget()
    await api.member_with("alice", 100, expiry={"days": 10})
    await api.enrol("bob")
    body = (
        await api.post(
            "/v1/transfers", {"from_member_id": "alice", "to_member_id": "bob", "points": 40}, role="crm"
        )
    ).json()
    assert body["kind"] == "transfer" and body["amount"] == 40
    assert body["balance"]["available"] == 60
    assert (await api.balance("alice"))["available"] == 60
    assert (await api.balance("bob"))["available"] == 40
    assert (await api.get("/v1/members/bob/expiring", params={"days": 30})).json()["total"] == 40
    history = (await api.get("/v1/members/bob/transactions")).json()["items"]
    assert history[0]["kind"] == "transfer" and history[0]["amount"] == 40
    assert history[0]["counterparty_id"] == "bob" and history[0]["member_id"] == "alice"
    r = await api.post(
        "/v1/transfers",
        {"from_member_id": "alice", "to_member_id": "bob", "points": 61},
        role="ecommerce",
        expect=None,
    )
    problem(r, 422, "insufficient_points")


async def test_transfer_to_oneself_is_400(api: Api) -> None:
    await api.budget()
    await api.member_with("alice", 100)
    r = await api.post(
        "/v1/transfers",
        {"from_member_id": "alice", "to_member_id": "alice", "points": 1},
        role="crm",
        expect=None,
    )
    assert problem(r, 400)["field"] == "to_member_id"
    assert (await api.balance("alice"))["available"] == 100


async def test_transfer_in_a_programme_without_transfers_is_422(api: Api, engine: AsyncEngine) -> None:
    api = Api(api.client, await make_programme(engine, allow_transfers=False))
    await api.budget()
    await api.member_with("alice", 100)
    await api.enrol("bob")
    r = await api.post(
        "/v1/transfers",
        {"from_member_id": "alice", "to_member_id": "bob", "points": 10},
        role="crm",
        expect=None,
    )
    problem(r, 422, "transfers_disabled")
    assert (await api.balance("alice"))["available"] == 100
    assert (await api.balance("bob"))["available"] == 0


async def test_transfers_follow_the_programme_setting(api: Api) -> None:
    await api.budget()
    await api.member_with("alice", 100)
    await api.enrol("bob")
    body = {"from_member_id": "alice", "to_member_id": "bob", "points": 10}
    await api.patch("/v1/programme", {"allow_transfers": False})
    problem(await api.post("/v1/transfers", body, role="crm", expect=None), 422, "transfers_disabled")
    await api.patch("/v1/programme", {"allow_transfers": True})
    await api.post("/v1/transfers", body, role="crm")
    assert (await api.balance("bob"))["available"] == 10


async def test_transaction_by_id_has_entries_that_sum_to_zero(api: Api) -> None:
    await api.budget(shards=4)
    await api.enrol("alice")
    await api.enrol("bob")
    ids = [
        (await api.earn("alice", 100, reference="o-1"))["transaction_id"],
        (await api.spend("alice", 30, reference="o-1"))["transaction_id"],
        (await api.hold("alice", 20))["hold_id"],
    ]
    txns = []
    for txn_id in ids[:2]:
        txn = (await api.get(f"/v1/transactions/{txn_id}", role="marketing")).json()
        assert txn["id"] == txn_id
        assert txn["entries"] and sum(e["amount"] for e in txn["entries"]) == 0
        txns.append(txn)
    earn, spend = txns
    assert earn["kind"] == "earn" and earn["amount"] == 100 and earn["budget"] == "base"
    assert {(e["account_kind"], e["account"]) for e in earn["entries"]} >= {("member", "alice")}
    assert spend["kind"] == "spend" and spend["amount"] == -30
    problem(await api.get("/v1/transactions/999999999", expect=None), 404, "transaction_not_found")


async def test_transactions_by_reference(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    await api.earn("alice", 100, reference="order-7")
    await api.earn("alice", 5, reference="order-8")
    await api.clawback("alice", "order-7", 40)
    found = (await api.get("/v1/transactions", params={"reference": "order-7"}, role="crm")).json()
    assert [(t["kind"], t["amount"]) for t in found] == [("earn", 100), ("clawback", -40)]
    assert found[1]["reverses_id"] == found[0]["id"]
    assert (await api.get("/v1/transactions", params={"reference": "none"})).json() == []


async def test_history_filters(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    await api.earn("alice", 100, reference="r-1")
    second = await api.earn("alice", 50, reference="r-2")
    await api.spend("alice", 30, reference="r-2")
    last = await api.spend("alice", 10)
    path = "/v1/members/alice/transactions"
    everything = (await api.get(path)).json()["items"]
    assert [(t["kind"], t["amount"]) for t in everything] == [
        ("spend", -10),
        ("spend", -30),
        ("earn", 50),
        ("earn", 100),
    ]
    earns = (await api.get(path, params={"kind": "earn"})).json()["items"]
    assert [t["amount"] for t in earns] == [50, 100]
    both = (await api.get(path, params=[("kind", "earn"), ("kind", "spend")])).json()["items"]
    assert len(both) == 4
    by_ref = (await api.get(path, params={"reference": "r-2"})).json()["items"]
    assert [t["kind"] for t in by_ref] == ["spend", "earn"]
    created = {t["id"]: t["created_at"] for t in everything}
    since = created[second["transaction_id"]]
    until = created[last["transaction_id"]]
    window = (await api.get(path, params={"since": since, "until": until})).json()["items"]
    assert [t["amount"] for t in window] == [-30, 50]
    assert (await api.get(path, params={"kind": "clawback"})).json() == {"items": [], "next_cursor": None}


async def test_history_cursor_neither_repeats_nor_skips(api: Api) -> None:
    await api.budget()
    await api.enrol("alice")
    for i in range(7):
        await api.earn("alice", i + 1)
    path = "/v1/members/alice/transactions"
    everything = [t["id"] for t in (await api.get(path, params={"limit": 200})).json()["items"]]
    assert len(everything) == 7 and everything == sorted(everything, reverse=True)
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get(path, params=params)).json()
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == everything
    problem(await api.get(path, params={"cursor": "garbage"}, expect=None), 400)


async def test_batch_earn(api: Api) -> None:
    await api.budget("b", cap=100)
    await api.enrol("alice")
    await api.enrol("bob")
    items = [
        {"member_id": "alice", "budget": "b", "points": 30},
        {"member_id": "nobody", "budget": "b", "points": 5},
        {"member_id": "bob", "budget": "b", "points": 20, "pending_days": 3},
    ]
    r = await api.post("/v1/earn/batch", {"items": items}, role="marketing", expect=None)
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (await api.balance("alice"))["available"] == 0
    result = (await api.post("/v1/earn/batch", {"items": items, "mode": "per_item"}, role="marketing")).json()
    assert (result["earned"], result["failed"], result["points"]) == (2, 1, 50)
    assert [t is not None for t in result["transaction_ids"]] == [True, False, True]
    assert [(f["index"], f["error"]) for f in result["failures"]] == [(1, "member_not_found")]
    assert (await api.balance("alice"))["available"] == 30
    assert (await api.balance("bob"))["pending"] == 20
    assert (await api.get("/v1/budgets/b")).json()["issued"] == 50


async def test_liability_report(api: Api) -> None:
    await api.budget("a", cap=10_000, unit_cost_micros=10_000)
    await api.budget("b", cap=10_000, unit_cost_micros=2_000)
    await api.enrol("alice")
    await api.earn("alice", 1_000, "a", expiry={"days": 10})
    await api.earn("alice", 500, "b")
    await api.earn("alice", 50, "b", pending_days=5)
    await api.spend("alice", 300)  # out of 'a', which expires first
    await api.hold("alice", 100)  # the rest of the soonest lot: 'a' again
    report = (await api.get("/v1/reports/liability")).json()
    assert report["currency"] == "CNY"
    lines = {line["budget"]: line for line in report["lines"]}
    assert (lines["a"]["available"], lines["a"]["pending"], lines["a"]["held"]) == (600, 0, 100)
    assert lines["a"]["liability_micros"] == 700 * 10_000
    assert (lines["b"]["available"], lines["b"]["pending"], lines["b"]["held"]) == (500, 50, 0)
    assert lines["b"]["liability_micros"] == 550 * 2_000
    assert report["outstanding_points"] == 1_250
    assert report["liability_micros"] == 700 * 10_000 + 550 * 2_000
    assert report["breakage_points"] == 0 and report["breakage_micros"] == 0
    balance = await api.balance("alice")
    assert balance["available"] + balance["pending"] + balance["held"] == report["outstanding_points"]
    for role in ("ecommerce", "crm", "marketing"):
        problem(await api.get("/v1/reports/liability", role=role, expect=None), 403, "role_not_allowed")


async def test_liability_numbers_are_json_integers(api: Api) -> None:
    # PostgreSQL's sum() of bigint is numeric: it once reached the JSON as '600' and '7.00E+6'.
    await api.budget("a")
    await api.member_with("alice", 10, "a")
    report = (await api.get("/v1/reports/liability")).json()
    numbers = [v for k, v in report.items() if k != "currency" and k != "lines"]
    numbers += [v for line in report["lines"] for k, v in line.items() if k != "budget"]
    assert all(type(v) is int for v in numbers), report
    assert report["outstanding_points"] == 10 and report["lines"][0]["available"] == 10


async def test_health_and_schema_need_no_auth(api: Api) -> None:
    live = await api.client.get("/health/live")
    assert live.status_code == 200 and live.json() == {"status": "ok"}
    ready = await api.client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgresql": "ok", "redis": "ok"}
    schema = await api.client.get("/schema/openapi.json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in ("/v1/earn", "/v1/spend", "/v1/holds", "/v1/clawbacks", "/v1/members", "/v1/me/balance"):
        assert path in paths

"""The dashboard's figures, after a realistic mix posted through the API, agree with the
liability report, with the budgets, with `ledger verify` and with direct sums over the ledger."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.ledger.verify import verify
from loyalty.reports import service, tasks
from tests.api.helpers import Api, problem
from tests.api.test_tiers import published, set_facts
from tests.support import make_programme


async def rolled_up(engine: AsyncEngine) -> None:
    """What the worker does every 10 s, with no margin: nothing runs beside the test."""
    await tasks.rollup(engine, margin_seconds=0)
    async with engine.begin() as conn:
        await service.refresh_forecast(conn)


async def sql(engine: AsyncEngine, query: str, **params: Any) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(text(query), params)).one()


async def post_mix(api: Api, engine: AsyncEngine) -> None:
    """Earns (immediate, pending, with expiry, batch), spends, holds (captured in part,
    voided, left open), refunds, adjustments both ways, a transfer, vesting, expiry, and a
    budget's top-up, move and close."""
    p = api.programme.id
    await api.budget("base", cap=100_000, unit_cost_micros=10_000)
    await api.budget("promo", cap=5_000, unit_cost_micros=4_000, shards=4)
    for name in ("ann", "bob", "cy", "dee", "eve", "fay"):
        await api.enrol(name)
    await api.earn("ann", 1_000, reference="o-1", expiry={"days": 200})
    await api.earn("bob", 600, reference="o-2", expiry={"days": 30})
    await api.earn("cy", 450, "promo", reference="o-3")
    await api.earn("dee", 300, reference="o-4", pending_days=14)
    await api.earn("eve", 800, "promo", expiry={"days": 400, "round_to": "month"})
    await api.earn("fay", 120, reference="o-5", pending_days=7)
    batch = {"items": [{"member_id": m, "points": 50, "budget": "base"} for m in ("ann", "bob", "cy")]}
    await api.post("/v1/earn/batch", batch, role="ecommerce", expect=None)
    assert (
        await sql(engine, "SELECT count(*) FROM transactions WHERE programme_id = :p AND kind = 'earn'", p=p)
    )[0] == 9
    await api.spend("ann", 250)
    await api.spend("eve", 100)
    hold = await api.hold("ann", 200)
    await api.post(f"/v1/holds/{hold['hold_id']}/capture", {"points": 150}, role="ecommerce", expect=200)
    hold = await api.hold("bob", 100)
    await api.post(f"/v1/holds/{hold['hold_id']}/void", role="ecommerce", expect=200)
    await api.hold("cy", 70)  # left open: held stock
    await api.clawback("ann", "o-1", 300)
    await api.clawback("cy", "o-3")  # the whole earn, part of it held: written off (clamp)
    await api.post(
        "/v1/adjustments", {"member_id": "dee", "points": 75, "reason": "goodwill", "unit_cost_micros": 9_000}
    )
    await api.post("/v1/adjustments", {"member_id": "eve", "points": -40, "reason": "correction"})
    await api.post(
        "/v1/transfers",
        {"from_member_id": "eve", "to_member_id": "fay", "points": 60},
        role="crm",
        expect=None,
    )
    await api.post("/v1/budgets/base/top-up", {"points": 1_000}, expect=None)
    await api.post(
        "/v1/budgets/moves", {"from_budget": "promo", "to_budget": "base", "points": 500}, expect=None
    )
    kinds = await sql(
        engine,
        "SELECT array_agg(DISTINCT kind ORDER BY kind) FROM transactions WHERE programme_id = :p",
        p=p,
    )
    assert {"transfer", "budget_top_up", "budget_move", "capture", "void", "clawback", "adjust"} <= set(
        kinds[0]
    )
    # fay's pending points vest; bob's lot and part of eve's are past their expiry.
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE lots SET vests_at = now() - interval '1 second' WHERE programme_id = :p AND member_id = "
                 "(SELECT id FROM members WHERE programme_id = :p AND external_id = 'fay') AND NOT vested"),
            {"p": p},
        )  # fmt: skip
        await conn.execute(
            text("UPDATE lots SET expires_at = now() - interval '1 second' WHERE programme_id = :p AND member_id = "
                 "(SELECT id FROM members WHERE programme_id = :p AND external_id = 'bob') AND remaining > 0"),
            {"p": p},
        )  # fmt: skip
        await conn.execute(text("SELECT ledger_vest_due(500)"))
        await conn.execute(text("SELECT ledger_expire_due(500)"))
    await api.earn("bob", 90, reference="o-6", expiry={"days": 45})
    await api.post("/v1/budgets/promo/close", expect=None)
    kinds = await sql(
        engine, "SELECT array_agg(DISTINCT kind) FROM transactions WHERE programme_id = :p", p=p
    )
    assert {"vest", "expire", "budget_close", "hold"} <= set(kinds[0]), kinds


@pytest.fixture
async def clamp(client: Any, engine: AsyncEngine) -> Api:
    return Api(client, await make_programme(engine, clawback_policy="clamp", timezone="Asia/Shanghai"))


async def test_every_figure_agrees_with_the_ledger(clamp: Api, engine: AsyncEngine) -> None:
    api, p = clamp, clamp.programme.id
    await post_mix(api, engine)
    await rolled_up(engine)
    liability = (await api.get("/v1/reports/liability")).json()
    async with engine.connect() as conn:
        assert await verify(conn, p) == []

    # Stock now: the liability report's buckets, and the members' balance rows.
    stock = (await api.get("/v1/reports/stock")).json()
    lines = liability["lines"]
    assert stock["available"] == sum(x["available"] for x in lines)
    assert stock["pending"] == sum(x["pending"] for x in lines)
    assert stock["held"] == sum(x["held"] for x in lines) == 70
    assert stock["outstanding"] == liability["outstanding_points"]
    balances = await sql(
        engine,
        "SELECT sum(b.available), sum(b.pending), sum(b.held) FROM account_balances b JOIN accounts a "
        "ON a.programme_id = b.programme_id AND a.id = b.account_id WHERE a.programme_id = :p AND a.kind = 'member'",
        p=p,
    )
    assert (stock["available"], stock["pending"], stock["held"]) == tuple(balances)

    # The liability series ends where the liability report is; breakage as the report says.
    series = (await api.get("/v1/reports/liability-series", params={"since": _days_ago(30)})).json()
    last = series["days"][-1]
    assert last["outstanding_points"] == liability["outstanding_points"]
    assert last["liability_micros"] == liability["liability_micros"]
    flows = (await api.get("/v1/reports/flows", params={"since": _days_ago(6, "Asia/Shanghai")})).json()
    totals = flows["totals"]
    assert len(flows["days"]) == 7
    assert totals["expired_points"] == liability["breakage_points"] > 0
    assert totals["expired_micros"] == liability["breakage_micros"]
    assert last["breakage_rate"] == pytest.approx(
        totals["expired_points"] / (totals["expired_points"] + totals["redeemed_points"])
    )

    # Each flow is the direct sum over the transactions of its kinds.
    direct = await sql(
        engine,
        """
        SELECT sum(amount) FILTER (WHERE kind = 'earn'), sum(cost_micros) FILTER (WHERE kind = 'earn'),
               -sum(amount) FILTER (WHERE kind IN ('spend', 'capture')),
               sum(cost_micros) FILTER (WHERE kind IN ('spend', 'capture')),
               -sum(amount) FILTER (WHERE kind = 'clawback'), sum(cost_micros) FILTER (WHERE kind = 'clawback'),
               sum(amount) FILTER (WHERE kind = 'adjust'), sum(cost_micros) FILTER (WHERE kind = 'adjust')
        FROM transactions WHERE programme_id = :p
        """,
        p=p,
    )
    assert (
        totals["issued_points"],
        totals["issued_micros"],
        totals["redeemed_points"],
        totals["redeemed_micros"],
        totals["clawed_back_points"],
        totals["clawed_back_micros"],
        totals["adjusted_points"],
        totals["adjusted_micros"],
    ) == tuple(direct)
    assert totals["issued_points"] == 1_000 + 600 + 450 + 300 + 800 + 120 + 150 + 90
    assert totals["redeemed_points"] == 250 + 100 + 150
    assert totals["adjusted_points"] == 75 - 40

    # Budgets: the rollup's cap and issued are the budgets' own.
    burns = {
        b["code"]: b
        for b in (await api.get("/v1/reports/budgets", params={"since": _days_ago(2)})).json()["budgets"]
    }
    for code in ("base", "promo"):
        own = (await api.get(f"/v1/budgets/{code}")).json()
        assert (burns[code]["cap"], burns[code]["issued"]) == (own["cap"], own["issued"]), code
        assert burns[code]["issued_micros"] == own["issued_cost_micros"]
        assert burns[code]["issued_series"][-1] == own["issued"]
        assert burns[code]["status"] == own["status"]
    assert burns["promo"]["status"] == "closed"

    # Members: six enrolled today, each of them active today.
    members = (await api.get("/v1/reports/members", params={"since": _days_ago(1)})).json()
    today = members["days"][-1]
    assert (today["new_members"], today["active_members"], today["total_members"]) == (6, 6, 6)
    assert members["days"][0]["total_members"] == 0

    # The forecast's due points are the lots' remaining points by month of expiry.
    forecast = (await api.get("/v1/reports/forecast")).json()
    due = await sql(
        engine,
        "SELECT coalesce(sum(remaining), 0), coalesce(sum(remaining * unit_cost_micros), 0) FROM lots "
        "WHERE programme_id = :p AND remaining > 0 AND expires_at < now() + interval '11 months'",
        p=p,
    )
    assert forecast["due_points"] == due[0] > 0 and forecast["due_micros"] == due[1]
    assert len(forecast["months"]) == 12
    ratio = forecast["expired_points"] / (forecast["expired_points"] + forecast["redeemed_points"])
    assert forecast["breakage_ratio"] == pytest.approx(ratio)
    for month in forecast["months"]:
        assert month["predicted_breakage_points"] == round(month["due_points"] * ratio)


async def test_debt_under_the_negative_policy_shows_in_points(api: Api, engine: AsyncEngine) -> None:
    """Under 'negative' a refund of spent points is debt: the stock and the outstanding points
    are the members' balances (net of the debt); the lots hold nothing."""
    await api.budget("base", cap=10_000)
    await api.member_with("ann", 300, reference="o-1")
    await api.spend("ann", 300)
    await api.clawback("ann", "o-1")
    await api.member_with("bob", 50)
    await rolled_up(engine)
    stock = (await api.get("/v1/reports/stock")).json()
    assert stock["available"] == -300 + 50
    series = (await api.get("/v1/reports/liability-series")).json()
    assert series["days"][-1]["outstanding_points"] == -250
    liability = (await api.get("/v1/reports/liability")).json()
    assert liability["outstanding_points"] == 50


async def test_rollup_is_idempotent_and_incremental(api: Api, engine: AsyncEngine) -> None:
    await api.budget("base", cap=10_000)
    await api.member_with("ann", 100)
    await rolled_up(engine)
    await rolled_up(engine)  # nothing new: nothing counted twice
    flows = (await api.get("/v1/reports/flows")).json()
    assert flows["totals"]["issued_points"] == 100
    await api.earn("ann", 40)
    await rolled_up(engine)
    flows = (await api.get("/v1/reports/flows")).json()
    assert flows["totals"]["issued_points"] == 140
    assert flows["days"][-1]["issued_points"] == 140


async def test_export_streams_every_transaction_of_the_period(api: Api, engine: AsyncEngine) -> None:
    await api.budget("base", cap=10_000, unit_cost_micros=12_345)
    await api.member_with("ann", 100, reference="o-1")
    await api.spend("ann", 30)
    r = await api.get("/v1/exports/transactions.csv", params={"since": _days_ago(0)})
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [row["kind"] for row in rows] == ["budget_allocation", "earn", "spend"]
    assert rows[0]["budget"] == "base" and rows[0]["member_id"] == ""
    earn = rows[1]
    assert earn["member_id"] == "ann" and earn["budget"] == "base" and earn["reference"] == "o-1"
    assert earn["points"] == "100" and earn["cost_micros"] == "1234500"
    assert earn["cost_minor"] == "123" and earn["cost"] == "1.23" and earn["currency"] == "CNY"
    assert rows[2]["points"] == "-30" and rows[2]["cost_micros"] == str(30 * 12_345)
    empty = await api.get(
        "/v1/exports/transactions.csv", params={"since": "2020-01-01", "until": "2020-01-31"}
    )
    assert empty.text.strip().split(",")[0] == "transaction_id" and len(empty.text.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "2026-13-01"}, "since"),
        ({"until": "yesterday"}, "until"),
        ({"since": "2026-05-02", "until": "2026-05-01"}, "since"),
        ({"since": "2020-01-01", "until": "2026-01-01"}, "until"),
    ],
)
@pytest.mark.parametrize("path", ["/v1/reports/flows", "/v1/reports/budgets", "/v1/exports/transactions.csv"])
async def test_bad_periods_are_400_naming_the_field(
    api: Api, path: str, params: dict[str, str], field: str
) -> None:
    r = await api.get(path, params=params, expect=None)
    body = problem(r, 400)
    assert field in r.text, body


@pytest.mark.parametrize("role", ["ecommerce", "crm", "marketing"])
async def test_reports_are_for_operators(api: Api, role: str) -> None:
    for path in ("/v1/reports/flows", "/v1/reports/stock", "/v1/exports/transactions.csv"):
        problem(await api.get(path, role=role, expect=None), 403, "role_not_allowed")


async def test_programmes_see_only_their_own_figures(api: Api, other: Api, engine: AsyncEngine) -> None:
    await other.budget("base", cap=10_000)
    await other.member_with("zed", 500)
    await rolled_up(engine)
    flows = (await api.get("/v1/reports/flows")).json()
    assert flows["totals"]["issued_points"] == 0
    assert (await api.get("/v1/reports/stock")).json()["available"] == 0
    csv_text = (await api.get("/v1/exports/transactions.csv")).text
    assert "zed" not in csv_text


def _days_ago(n: int, timezone: str = "UTC") -> str:
    """n days before today in the programme's timezone (UTC for `api`, Asia/Shanghai for `clamp`,
    where the day starts eight hours before UTC's)."""
    return (datetime.now(ZoneInfo(timezone)).date() - timedelta(days=n)).isoformat()


async def test_members_by_tier_and_moves_agree_with_the_tier_rows(api: Api, engine: AsyncEngine) -> None:
    await published(api)
    for m, points in (("m1", 6000), ("m2", 1500), ("m3", 1200), ("m4", 0), ("m5", 0)):
        await api.enrol(m)
        await set_facts(engine, api, m, points)
        await api.post(f"/v1/members/{m}/tier/assess", expect=200)
    await api.post("/v1/members/m4/tier/pin", {"kind": "fixed", "tier": "gold", "reason": "VIP"}, expect=200)
    await api.post("/v1/members/m5/tier/pin", {"kind": "floor", "tier": "silver", "reason": "x"}, expect=200)
    r = await api.client.request(
        "DELETE", "/v1/members/m4/tier/pin", json={"reason": "done"}, headers=api.headers()
    )
    assert r.status_code == 200, r.text
    await rolled_up(engine)
    truth = await sql(
        engine,
        """
        SELECT jsonb_object_agg(tier, n) FROM (
            SELECT coalesce(t.tier, 'bronze') AS tier, count(*) AS n
            FROM members m LEFT JOIN member_tiers t ON t.programme_id = m.programme_id AND t.member_id = m.id
            WHERE m.programme_id = :p GROUP BY 1) x
        """,
        p=api.programme.id,
    )
    body = (await api.get("/v1/reports/tiers")).json()
    assert [t["tier"] for t in body["tiers"]] == ["bronze", "silver", "gold"]
    assert {t["tier"]: t["members"] for t in body["tiers"] if t["members"]} == truth[0]
    assert body["total_members"] == 5 and body["untiered"] == 0
    moves = (await api.get("/v1/reports/tier-moves", params={"since": _days_ago(7)})).json()
    week = moves["weeks"][-1]
    assert week["promoted"] == 3  # m1 to gold, m2 and m3 to silver
    history = await sql(
        engine,
        "SELECT count(*) FROM member_tier_history WHERE programme_id = :p AND from_tier IS DISTINCT FROM to_tier",
        p=api.programme.id,
    )
    assert sum(w["promoted"] + w["demoted"] + w["other"] for w in moves["weeks"]) == history[0]

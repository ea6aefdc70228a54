"""The nightly refresh: window figures, RFM and lifecycle for every member in one statement per
programme, agreeing with activity.core; windows roll without events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.activity import core, repository, tasks
from loyalty.rules import days_since
from tests.support import make_programme

SETTINGS: dict[str, Any] = {
    "window_kind": "rolling_months",
    "window_months": 12,
    "rfm": {
        "recency_days": [7, 30, 90, 180],
        "frequency": [1, 2, 5, 10],
        "monetary": [100, 1_000, 5_000, 20_000],
    },
    "lifecycle": {"new_days": 30, "active_days": 90, "silent_days": 180},
    "custom_event_types": [],
}

# (enrolled days ago, [(days ago, orders, spend)...])
MEMBERS = {
    "fresh": (3, []),
    "loyal": (900, [(2, 3, 4_000), (40, 8, 30_000), (500, 20, 90_000)]),
    "lapsing": (900, [(120, 1, 700)]),
    "gone": (900, [(400, 4, 9_000)]),
    "never": (60, []),
}


async def test_refresh_matches_core_and_rolls_windows(engine: AsyncEngine) -> None:
    programme = await make_programme(engine)
    p = programme.id
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        await repository.put_settings(conn, p, SETTINGS)
        for name, (enrolled, days) in MEMBERS.items():
            await conn.execute(text("SELECT ledger_open_member(:p, :e, '{}')"), {"p": p, "e": name})
            await conn.execute(
                text("UPDATE members SET enrolled_at = :t WHERE programme_id = :p AND external_id = :e"),
                {"p": p, "e": name, "t": now - timedelta(days=enrolled)},
            )
            member_id = (await repository.member(conn, p, name) or (0, ""))[0]
            for ago, orders, spend in days:
                at = now - timedelta(days=ago, hours=1)
                await repository.add_activity(conn, p, member_id, at.date(), orders=orders, spend=spend)
                await repository.note_order(conn, p, member_id, at)

    assert await tasks.refresh_member_facts({"engine": engine}) >= len(MEMBERS)

    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT m.external_id, m.enrolled_at, f.* FROM members m JOIN member_facts f "
                "ON f.programme_id = m.programme_id AND f.member_id = m.id WHERE m.programme_id = :p"
            ),
            {"p": p},
        )
        facts = {r.external_id: r for r in rows}
    assert set(facts) == set(MEMBERS)
    for name, (_, days) in MEMBERS.items():
        f = facts[name]
        in_window = [d for d in days if d[0] < 360]
        assert f.orders == sum(d[1] for d in in_window), name
        assert f.spend == sum(d[2] for d in in_window), name
        assert f.lifetime_orders == sum(d[1] for d in days), name
        assert f.lifetime_spend == sum(d[2] for d in days), name
        recency = days_since(f.last_order_at, now=now)
        expected = core.rfm_scores(SETTINGS["rfm"], recency_days=recency, orders=f.orders, spend=f.spend)
        assert (f.recency_score, f.frequency_score, f.monetary_score) == expected, name
        stage = core.lifecycle_stage(
            SETTINGS["lifecycle"],
            enrolment_days=days_since(f.enrolled_at, now=now) or 0,
            recency_days=recency,
        )
        assert f.lifecycle == stage, name
    assert [facts[n].lifecycle for n in MEMBERS] == ["new", "active", "silent", "churned", "active"]
    assert (facts["loyal"].recency_score, facts["loyal"].frequency_score) == (5, 5)

    # A year later, with no events: the windows have rolled and the stages moved on.
    async with engine.begin() as conn:
        await repository.refresh_facts(conn, p, now=now + timedelta(days=365))
        rows = await conn.execute(
            text(
                "SELECT m.external_id, f.orders, f.lifecycle FROM members m JOIN member_facts f "
                "ON f.programme_id = m.programme_id AND f.member_id = m.id WHERE m.programme_id = :p"
            ),
            {"p": p},
        )
        later = {r.external_id: (r.orders, r.lifecycle) for r in rows}
    assert later["loyal"] == (0, "churned")
    assert later["fresh"] == (0, "churned")

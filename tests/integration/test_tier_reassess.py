"""The full tier re-evaluation: set-based SQL over every member of a programme, in keyset slices,
that must decide exactly as core.decide does — trigger "scheduled" for a member who is due,
"event" (promotion only) for everyone else, the base tier for a member without a tier row.

Reuses the scheduled job's generated members (tests/integration/test_tier_cron.py) and adds
members that have no member_tiers row at all.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty import rules
from loyalty.facts.repository import load_facts
from loyalty.tiers import core, service, tasks
from loyalty.tiers.definition import LadderSpec, state_for
from tests.integration.test_tier_cron import NOW, TZ, _setup, _stored, member_rows


@st.composite
def maybe_rows(draw: st.DrawFn) -> dict[str, Any]:
    row = draw(member_rows())
    row["has_row"] = draw(st.integers(0, 3)) > 0
    return row


async def _row(conn: AsyncConnection, programme_id: int, member_id: int) -> dict[str, Any] | None:
    found = await conn.scalar(
        text("SELECT count(*) FROM member_tiers WHERE programme_id = :p AND member_id = :m"),
        {"p": programme_id, "m": member_id},
    )
    return await _stored(conn, programme_id, member_id) if found else None


async def _expected(
    conn: AsyncConnection, programme_id: int, spec: LadderSpec, member_id: int
) -> tuple[core.TierDecision[Any], str]:
    stored = await _row(conn, programme_id, member_id)
    facts = await load_facts(conn, programme_id=programme_id, member_id=member_id, now=NOW)
    assert facts is not None
    outcomes: dict[str, core.RuleOutcome[Any]] = {
        t.tier.code: core.RuleOutcome(rules.evaluate(t.entry, facts), rules.evaluate(t.retention, facts))
        for t in spec.tiers[1:]
    }
    due = (
        stored is not None
        and stored["next_assessment_at"] is not None
        and stored["next_assessment_at"] <= NOW
    )
    trigger: core.Trigger = "scheduled" if due else "event"
    decision = core.decide(
        ladder=spec.ladder, state=state_for(spec, stored), outcomes=outcomes, now=NOW, trigger=trigger, tz=TZ
    )
    return decision, trigger


async def _history(conn: AsyncConnection, programme_id: int, member_id: int) -> list[tuple[Any, ...]]:
    rows = await conn.execute(
        text(
            "SELECT kind, reason, from_tier, to_tier, trace->>'trigger' FROM member_tier_history"
            " WHERE programme_id = :p AND member_id = :m ORDER BY kind = 'pin_expired' DESC, id"
        ),
        {"p": programme_id, "m": member_id},
    )
    return [tuple(r) for r in rows]


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=st.lists(maybe_rows(), min_size=1, max_size=12), batch=st.sampled_from([1, 3, 1000]))
async def test_reassessment_agrees_with_core_decide(
    engine: AsyncEngine, rows: list[dict[str, Any]], batch: int
) -> None:
    programme_id, spec, ids = await _setup(engine, rows)
    expected: dict[int, tuple[core.TierDecision[Any], str]] = {}
    async with engine.connect() as conn:
        for member_id in ids:
            expected[member_id] = await _expected(conn, programme_id, spec, member_id)

    result = await tasks.reassess_programme(engine, programme_id=programme_id, now=NOW, batch=batch)
    assert result.members == len(rows)

    async with engine.connect() as conn:
        for index, member_id in enumerate(ids):
            decision, trigger = expected[member_id]
            after = await _row(conn, programme_id, member_id)
            assert after is not None, "every member has a tier row after a re-evaluation"
            new = decision.new_state
            got = (after["tier"], after["achieved_at"], after["valid_until"], after["grace_until"])
            assert got == (new.tier, new.achieved_at, new.valid_until, new.grace_until), (
                rows[index],
                decision,
            )
            pin = (after["pin_kind"], after["pin_tier"], after["pin_until"])
            want_pin = (new.pin.kind, new.pin.tier, new.pin.until) if new.pin else (None, None, None)
            assert pin == want_pin, (rows[index], decision)
            assert after["next_assessment_at"] == decision.next_assessment_at, (rows[index], decision)
            want = []
            if decision.pin_expired:
                want.append(("pin_expired", "pin_expired", decision.from_tier, decision.from_tier, trigger))
            if service._history_worthy(decision):
                want.append((decision.kind, decision.reason, decision.from_tier, decision.to_tier, trigger))
            assert await _history(conn, programme_id, member_id) == want, (rows[index], decision)
            events = await conn.scalar(
                text("SELECT count(*) FROM domain_events WHERE programme_id = :p AND subject = :s"),
                {"p": programme_id, "s": f"member:m{index:03d}"},
            )
            assert events == (1 if decision.from_tier != decision.to_tier else 0)

    # At the same instant a second run finds nothing to do.
    async with engine.connect() as conn:
        before = [await _row(conn, programme_id, m) for m in ids]
        history_count = await conn.scalar(
            text("SELECT count(*) FROM member_tier_history WHERE programme_id = :p"), {"p": programme_id}
        )
    again = await tasks.reassess_programme(engine, programme_id=programme_id, now=NOW, batch=batch)
    assert again.changed == 0
    async with engine.connect() as conn:
        assert [await _row(conn, programme_id, m) for m in ids] == before
        assert history_count == await conn.scalar(
            text("SELECT count(*) FROM member_tier_history WHERE programme_id = :p"), {"p": programme_id}
        )


async def test_reassessment_promotes_but_demotes_only_the_due(engine: AsyncEngine) -> None:
    base = {"achieved_at": NOW - timedelta(days=400), "grace_until": None, "pin": None}
    rows = [
        # No tier row, qualifies for gold: promoted at once, by the event rules.
        {**base, "tier": "bronze", "qp": 6000, "valid_until": None, "due": False, "has_row": False},
        # No tier row, qualifies for nothing: gets a base-tier row, no history.
        {**base, "tier": "bronze", "qp": 0, "valid_until": None, "due": False, "has_row": False},
        # Gold, no longer qualifies, validity not over: untouched (an event never demotes).
        {**base, "tier": "gold", "qp": 0, "valid_until": NOW + timedelta(days=30), "due": False, "has_row": True},
        # Gold, no longer qualifies, validity over and due: to_qualified lands on bronze.
        {**base, "tier": "gold", "qp": 0, "valid_until": NOW - timedelta(days=1), "due": True, "has_row": True},
    ]  # fmt: skip
    programme_id, _, ids = await _setup(engine, rows)
    result = await tasks.reassess_programme(engine, programme_id=programme_id, now=NOW, batch=2)
    assert result.members == 4  # every row written: two created, two with a new next_assessment_at
    async with engine.connect() as conn:
        after = [await _row(conn, programme_id, m) for m in ids]
        history = [await _history(conn, programme_id, m) for m in ids]
    assert [a["tier"] if a else None for a in after] == ["gold", "bronze", "gold", "bronze"]
    assert history == [
        [("promoted", "entry_rule_met", "bronze", "gold", "event")],
        [],
        [],
        [("demoted", "validity_ended", "gold", "bronze", "scheduled")],
    ]


async def test_tier_outside_the_new_ladder_counts_as_base(engine: AsyncEngine) -> None:
    rows = [
        {"tier": "bronze", "qp": 1200, "achieved_at": NOW - timedelta(days=10), "valid_until": None,
         "grace_until": None, "pin": None, "due": False, "has_row": True},
    ]  # fmt: skip
    programme_id, _, ids = await _setup(engine, rows)
    async with engine.begin() as conn:
        # A ladder version that dropped the member's tier.
        await conn.execute(
            text(
                "UPDATE member_tiers SET tier = 'diamond', rank = 9, valid_until = :v WHERE programme_id = :p"
            ),
            {"p": programme_id, "v": NOW + timedelta(days=5)},
        )
    await tasks.reassess_programme(engine, programme_id=programme_id, now=NOW)
    async with engine.connect() as conn:
        after = await _row(conn, programme_id, ids[0])
        history = await _history(conn, programme_id, ids[0])
    assert after is not None and after["tier"] == "silver" and after["valid_until"] == NOW.replace(year=2027)
    assert history == [("promoted", "entry_rule_met", "bronze", "silver", "event")]

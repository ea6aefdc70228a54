"""The scheduled tier job: set-based SQL that must decide exactly as core.decide(trigger="scheduled").

Each Hypothesis example makes a programme with a four-tier ladder, members with generated tier
rows (validity, grace, pins, live or expired, due or not) and facts, runs the job once at a
fixed ``now``, and compares every member's stored tier, dates, pin and next assessment, and the
history rows and events written, with what core.decide says for the same member.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty import rules
from loyalty.facts.repository import load_facts
from loyalty.http.principal import Principal
from loyalty.members import repository as members
from loyalty.tiers import core, service, tasks
from loyalty.tiers import schemas as s
from loyalty.tiers.definition import LadderSpec, parse_definition, state_for
from tests.support import make_programme

NOW = datetime(2026, 3, 15, 10, 30, tzinfo=UTC)
TZ = "Europe/Berlin"
CODES = ("bronze", "silver", "gold", "plat")


def _qp(at_least: int) -> dict[str, Any]:
    return {"fact": "qualifying_points", "op": ">=", "value": at_least}


LADDER = s.LadderCreate(
    tiers=[
        s.TierIn(code="bronze", rank=0),
        s.TierIn(
            code="silver", rank=1, entry=_qp(1000), retention=_qp(500),
            validity=s.ValidityIn(months=12), grace_days=30,
        ),
        s.TierIn(
            code="gold", rank=2, entry=_qp(5000), retention=_qp(3000),
            validity=s.ValidityIn(months=12, round_to="month"), downgrade_policy="to_qualified",
        ),
        s.TierIn(
            code="plat", rank=3, entry=_qp(20000), retention=_qp(10000),
            validity=s.ValidityIn(months=6, round_to="year"), downgrade_policy="to_qualified", grace_days=14,
        ),
    ]
)  # fmt: skip

offsets = st.sampled_from([-400, -40, -1, 0, 3, 100])


def moment(days: int) -> datetime:
    return NOW + timedelta(days=days)


@st.composite
def member_rows(draw: st.DrawFn) -> dict[str, Any]:
    pin = draw(
        st.none()
        | st.tuples(st.sampled_from(["floor", "fixed"]), st.sampled_from(CODES), st.none() | offsets)
    )
    return {
        "tier": draw(st.sampled_from(CODES)),
        "qp": draw(st.sampled_from([0, 600, 1200, 3500, 6000, 12000, 25000])),
        "achieved_at": NOW - timedelta(days=200),
        "valid_until": None if draw(st.booleans()) and draw(st.booleans()) else moment(draw(offsets)),
        "grace_until": moment(draw(offsets)) if draw(st.booleans()) else None,
        "pin": None if pin is None else (pin[0], pin[1], None if pin[2] is None else moment(pin[2])),
        "due": draw(st.integers(0, 5)) > 0,
    }


async def _setup(engine: AsyncEngine, rows: list[dict[str, Any]]) -> tuple[int, LadderSpec, list[int]]:
    """A programme with LADDER published and one member per row: facts, and a tier row unless
    the row says has_row=False."""
    programme = await make_programme(engine, timezone=TZ)
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="operator", key_id=0)
    ids = []
    async with engine.begin() as conn:
        created = await service.create_version(conn, who, LADDER)
        await service.publish(
            conn, who, created.version, s.PublishRequest(effective_at=datetime(2020, 1, 1, tzinfo=UTC))
        )
        for index, row in enumerate(rows):
            await members.enrol(conn, programme.id, f"m{index:03d}", "{}")
            member_id = await conn.scalar(
                text("SELECT id FROM members WHERE programme_id = :p AND external_id = :e"),
                {"p": programme.id, "e": f"m{index:03d}"},
            )
            ids.append(member_id)
            await conn.execute(
                text(
                    "INSERT INTO member_facts (programme_id, member_id, qualifying_points) VALUES (:p, :m, :q)"
                ),
                {"p": programme.id, "m": member_id, "q": row["qp"]},
            )
            if not row.get("has_row", True):
                continue
            pin = row["pin"] or (None, None, None)
            await conn.execute(
                text(
                    "INSERT INTO member_tiers (programme_id, member_id, tier, rank, ladder_version, achieved_at,"
                    " valid_until, grace_until, pin_kind, pin_tier, pin_until, pin_reason, next_assessment_at)"
                    " VALUES (:p, :m, :tier, 0, 1, :achieved, :valid, :grace, :pk, :pt, :pu, :pr, :next)"
                ),
                {
                    "p": programme.id, "m": member_id, "tier": row["tier"], "achieved": row["achieved_at"],
                    "valid": row["valid_until"], "grace": row["grace_until"], "pk": pin[0], "pt": pin[1],
                    "pu": pin[2], "pr": "because" if pin[0] else None,
                    "next": NOW - timedelta(minutes=1) if row["due"] else NOW + timedelta(days=1),
                },
            )  # fmt: skip
        spec = await _spec(conn, programme.id)
    return programme.id, spec, ids


async def _spec(conn: AsyncConnection, programme_id: int) -> LadderSpec:
    definition = await conn.scalar(
        text("SELECT definition FROM tier_ladder_versions WHERE programme_id = :p AND version = 1"),
        {"p": programme_id},
    )
    return parse_definition(definition, version=1)


async def _stored(conn: AsyncConnection, programme_id: int, member_id: int) -> dict[str, Any]:
    row = (
        await conn.execute(
            text(
                "SELECT tier, achieved_at, valid_until, grace_until, pin_kind, pin_tier, pin_until, pin_reason,"
                " next_assessment_at FROM member_tiers WHERE programme_id = :p AND member_id = :m"
            ),
            {"p": programme_id, "m": member_id},
        )
    ).one()
    return dict(row._mapping)


async def _expected(
    conn: AsyncConnection, programme_id: int, spec: LadderSpec, member_id: int
) -> tuple[core.TierDecision[Any], dict[str, Any]]:
    stored = await _stored(conn, programme_id, member_id)
    facts = await load_facts(conn, programme_id=programme_id, member_id=member_id, now=NOW)
    assert facts is not None
    outcomes: dict[str, core.RuleOutcome[Any]] = {
        t.tier.code: core.RuleOutcome(rules.evaluate(t.entry, facts), rules.evaluate(t.retention, facts))
        for t in spec.tiers[1:]
    }
    state = state_for(spec, stored)
    decision = core.decide(
        ladder=spec.ladder, state=state, outcomes=outcomes, now=NOW, trigger="scheduled", tz=TZ
    )
    return decision, stored


@settings(max_examples=50, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(rows=st.lists(member_rows(), min_size=1, max_size=12))
async def test_set_based_job_agrees_with_core_decide(engine: AsyncEngine, rows: list[dict[str, Any]]) -> None:
    programme_id, spec, ids = await _setup(engine, rows)
    expected: dict[int, tuple[core.TierDecision[Any], dict[str, Any]]] = {}
    async with engine.connect() as conn:
        for member_id in ids:
            expected[member_id] = await _expected(conn, programme_id, spec, member_id)
    async with engine.begin() as conn:
        done, _ = await service.run_scheduled(conn, programme_id=programme_id, now=NOW)
    assert done == sum(1 for row in rows if row["due"])
    async with engine.connect() as conn:
        for member_id, row in zip(ids, rows, strict=True):
            decision, before = expected[member_id]
            after = await _stored(conn, programme_id, member_id)
            history = (
                await conn.execute(
                    text(
                        "SELECT kind, reason, from_tier, to_tier FROM member_tier_history"
                        " WHERE programme_id = :p AND member_id = :m ORDER BY kind = 'pin_expired' DESC, id"
                    ),
                    {"p": programme_id, "m": member_id},
                )
            ).all()
            events = await conn.scalar(
                text("SELECT count(*) FROM domain_events WHERE programme_id = :p AND subject = :s"),
                {"p": programme_id, "s": f"member:m{ids.index(member_id):03d}"},
            )
            if not row["due"]:
                assert after == before and history == [] and events == 0
                continue
            new = decision.new_state
            got = (after["tier"], after["achieved_at"], after["valid_until"], after["grace_until"])
            assert got == (new.tier, new.achieved_at, new.valid_until, new.grace_until), (row, decision)
            pin = (after["pin_kind"], after["pin_tier"], after["pin_until"])
            want_pin = (new.pin.kind, new.pin.tier, new.pin.until) if new.pin else (None, None, None)
            assert pin == want_pin, (row, decision)
            assert after["next_assessment_at"] == decision.next_assessment_at, (row, decision)
            want_history = []
            if decision.pin_expired:
                want_history.append(("pin_expired", "pin_expired", decision.from_tier, decision.from_tier))
            if service._history_worthy(decision):
                want_history.append((decision.kind, decision.reason, decision.from_tier, decision.to_tier))
            assert [tuple(h) for h in history] == want_history, (row, decision)
            assert events == (1 if decision.from_tier != decision.to_tier else 0)


async def test_cron_demotes_after_validity_and_grace_and_expires_pins(engine: AsyncEngine) -> None:
    rows = [
        # silver, validity over, no longer qualifies: grace starts.
        {"tier": "silver", "qp": 0, "achieved_at": NOW - timedelta(days=400), "valid_until": NOW - timedelta(days=1),
         "grace_until": None, "pin": None, "due": True},
        # silver whose grace is over: one step down to bronze.
        {"tier": "silver", "qp": 0, "achieved_at": NOW - timedelta(days=400), "valid_until": NOW - timedelta(days=40),
         "grace_until": NOW - timedelta(days=1), "pin": None, "due": True},
        # plat, validity over, retains gold only: to_qualified lands on gold after grace.
        {"tier": "plat", "qp": 6000, "achieved_at": NOW - timedelta(days=400), "valid_until": NOW - timedelta(days=40),
         "grace_until": NOW - timedelta(days=1), "pin": None, "due": True},
        # gold held by an expired fixed pin: the pin is cleared, audited, the rules renew it.
        {"tier": "gold", "qp": 3500, "achieved_at": NOW - timedelta(days=400), "valid_until": NOW - timedelta(days=1),
         "grace_until": None, "pin": ("fixed", "gold", NOW - timedelta(hours=1)), "due": True},
    ]  # fmt: skip
    programme_id, _, ids = await _setup(engine, rows)
    await tasks.assess_due(engine, now=NOW)
    async with engine.connect() as conn:
        after = [await _stored(conn, programme_id, m) for m in ids]
        kinds = [
            [
                tuple(r)
                for r in await conn.execute(
                    text(
                        "SELECT kind, reason, to_tier FROM member_tier_history"
                        " WHERE programme_id = :p AND member_id = :m ORDER BY id"
                    ),
                    {"p": programme_id, "m": m},
                )
            ]
            for m in ids
        ]
        events = (
            await conn.execute(
                text("SELECT subject, payload FROM domain_events WHERE programme_id = :p ORDER BY subject"),
                {"p": programme_id},
            )
        ).all()
    assert after[0]["tier"] == "silver" and after[0]["grace_until"] == datetime(
        2026, 4, 14, 9, 30, tzinfo=UTC
    )
    assert kinds[0] == [("grace_started", "validity_ended_grace", "silver")]
    assert after[1]["tier"] == "bronze" and kinds[1] == [("demoted", "grace_ended", "bronze")]
    assert after[2]["tier"] == "gold" and kinds[2] == [("demoted", "grace_ended", "gold")]
    assert after[3]["tier"] == "gold" and after[3]["pin_kind"] is None
    assert kinds[3] == [("pin_expired", "pin_expired", "gold"), ("retained", "retention_rule_met", "gold")]
    assert [(e.subject, e.payload["to_tier"]) for e in events] == [
        ("member:m001", "bronze"),
        ("member:m002", "gold"),
    ]
    # Nothing is due any more: a second run changes nothing.
    assert await tasks.assess_due(engine, now=NOW) == 0

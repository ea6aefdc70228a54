"""The answer of a recorded event, and the tier assessment an event may need, shared by
event recording and refunds."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.activity import schemas as s
from loyalty.activity.event_config import EventConfig
from loyalty.activity.facts import facts_to_json
from loyalty.auth.core import Principal
from loyalty.rules import Facts
from loyalty.tiers import service as tiers


def build_result(
    req: s.EventIn,
    occurred_at: datetime,
    outcomes: list[s.RuleOutcome],
    clawback: s.ClawbackOutcome | None,
    facts: Facts,
    change: tiers.TierChange | None,
    simulate: bool,
    *,
    points: int | None = None,
) -> s.EventResult:
    tier = None
    if change is not None:
        facts = dataclasses.replace(facts, tier=change.to_tier)
        tier = s.TierOutcome(
            kind=change.kind, reason=change.reason, from_tier=change.from_tier, to_tier=change.to_tier,
            bonus=change.bonus,
        )  # fmt: skip
    return s.EventResult(
        event_id=req.event_id,
        member_id=req.member_id,
        type=req.type,
        occurred_at=occurred_at,
        points=sum(o.points for o in outcomes) if points is None else points,
        rules=outcomes,
        clawback=clawback,
        facts=facts_to_json(facts),
        tier=tier,
        simulated=simulate,
    )


def outcome_json(result: s.EventResult, qualifying: int) -> dict[str, Any]:
    """What member_events.outcome keeps: the qualifying points and the rules that earned."""
    return {"qualifying": qualifying, "rules": [o.code for o in result.rules if o.points]}


def with_points(facts: Facts, points: int, qualifying: int) -> Facts:
    """The facts after add_points_and_activity(lifetime=max(points, 0), qualifying=qualifying)."""
    return dataclasses.replace(
        facts,
        lifetime_points=(facts.lifetime_points or 0) + max(points, 0),
        qualifying_points=(facts.qualifying_points or 0) + int(qualifying),  # a clawback's share is numeric
    )


async def assess_tier(
    conn: AsyncConnection, who: Principal, member_id: int, now: datetime, config: EventConfig, facts: Facts
) -> tiers.TierChange | None:
    return await tiers.assess_member(
        conn,
        programme_id=who.programme_id,
        member_id=member_id,
        now=now,
        trigger="event",
        actor=who.actor,
        preloaded=tiers.Preloaded(spec=config.ladder(now), timezone=config.timezone, facts=facts),
    )

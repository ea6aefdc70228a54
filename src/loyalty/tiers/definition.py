"""A stored ladder definition (JSON) turned into core.Ladder plus each tier's parsed rules. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from loyalty import rules
from loyalty.tiers import core


@dataclass(frozen=True, slots=True)
class Bonus:
    budget: str
    points: int


@dataclass(frozen=True, slots=True)
class TierRules:
    tier: core.Tier
    name: str
    entry: rules.Rule
    retention: rules.Rule
    bonus: Bonus | None


@dataclass(frozen=True, slots=True)
class LadderSpec:
    version: int
    ladder: core.Ladder
    tiers: tuple[TierRules, ...]  # rank order, base first

    def rules_of(self, code: str) -> TierRules:
        return self.tiers[self.ladder.position(code)]

    def has(self, code: str | None) -> bool:
        return code is not None and any(t.tier.code == code for t in self.tiers)


def parse_definition(definition: dict[str, Any], *, version: int = 0) -> LadderSpec:
    """Validate a ladder definition: rules are parsed with their path (``tiers[1].entry.all[0]``),
    the ladder's shape by core.Ladder. Raises RuleError / InvalidInput."""
    raw_tiers = definition.get("tiers") or []
    parsed: list[TierRules] = []
    errors: list[tuple[str, str]] = []
    for index, raw in enumerate(raw_tiers):
        entry = retention = rules.ALWAYS
        try:
            entry = rules.parse_rule(raw.get("entry", True), path=f"tiers[{index}].entry")
        except rules.RuleError as exc:
            errors.extend(exc.errors)
        raw_retention = raw.get("retention")
        try:
            retention = (
                entry
                if raw_retention is None
                else rules.parse_rule(raw_retention, path=f"tiers[{index}].retention")
            )
        except rules.RuleError as exc:
            errors.extend(exc.errors)
        validity = raw.get("validity") or {}
        tier = core.Tier(
            code=raw["code"],
            rank=raw["rank"],
            validity=core.Validity(validity.get("months"), validity.get("round_to", "none")),
            downgrade_policy=raw.get("downgrade_policy", "one_step"),
            grace_days=raw.get("grace_days", 0),
        )
        bonus = raw.get("bonus")
        parsed.append(
            TierRules(
                tier=tier,
                name=raw.get("name", ""),
                entry=entry,
                retention=retention,
                bonus=Bonus(bonus["budget"], bonus["points"]) if bonus else None,
            )
        )
    if errors:
        raise rules.RuleError(errors)
    ladder = core.Ladder(tuple(t.tier for t in parsed))
    ordered = tuple(sorted(parsed, key=lambda t: t.tier.rank))
    return LadderSpec(version=version, ladder=ladder, tiers=ordered)


def outcomes_for(spec: LadderSpec, facts: rules.Facts) -> dict[str, core.RuleOutcome[rules.Explanation]]:
    """Every non-base tier's entry and retention rule, explained for one member."""
    out: dict[str, core.RuleOutcome[rules.Explanation]] = {}
    for tier_rules in spec.tiers[1:]:
        entry = rules.explain(tier_rules.entry, facts)
        retention = rules.explain(tier_rules.retention, facts)
        out[tier_rules.tier.code] = core.RuleOutcome(
            entry_met=entry.passed,
            retention_met=retention.passed,
            entry_explanation=entry,
            retention_explanation=retention,
        )
    return out


def state_for(spec: LadderSpec, row: dict[str, Any] | None) -> core.TierState | None:
    """The member's stored tier as core sees it. A tier (or pin tier) the ladder no longer has
    counts as the base tier (or no pin): the ladder changed under the member."""
    if row is None:
        return None
    pin = None
    if row["pin_kind"] is not None and spec.has(row["pin_tier"]):
        pin = core.Pin(row["pin_kind"], row["pin_tier"], row["pin_until"], row["pin_reason"] or "")
    if not spec.has(row["tier"]):
        return core.TierState(spec.ladder.base.code, row["achieved_at"], None, None, pin)
    return core.TierState(row["tier"], row["achieved_at"], row["valid_until"], row["grace_until"], pin)


def trace_of(decision: core.TierDecision[rules.Explanation], *, trigger: str, at: datetime) -> dict[str, Any]:
    """What a history row keeps of a decision: the deciding rules, each leaf explained."""
    pin = decision.pin
    return {
        "trigger": trigger,
        "kind": decision.kind,
        "reason": decision.reason,
        "decided_by_tier": decision.decided_by_tier,
        "rules": [
            {
                "tier": verdict.tier,
                "rule": verdict.rule,
                "met": verdict.met,
                "explanation": msgspec.to_builtins(verdict.explanation),
            }
            for verdict in decision.explanations
        ],
        "pin": None
        if pin is None
        else {
            "kind": pin.kind,
            "tier": pin.tier,
            "until": msgspec.to_builtins(pin.until),
            "reason": pin.reason,
        },
        "pin_expired": decision.pin_expired,
        "at": msgspec.to_builtins(at),
    }


def grace_end_at(now: datetime, days: int, tz: str) -> datetime:
    """core's grace arithmetic: local calendar days from ``now`` (a day is 23 or 25 h across DST)."""
    return (now.astimezone(ZoneInfo(tz)) + timedelta(days=days)).astimezone(UTC)

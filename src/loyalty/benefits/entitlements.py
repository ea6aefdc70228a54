"""What a member is entitled to now, and from which source: their tier, running segment
campaigns, grants, and what their upgrades bring (core.lifts, core.through_upgrades)."""

from __future__ import annotations

import functools
from datetime import datetime
from fractions import Fraction
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import rules
from loyalty.benefits import core, repository
from loyalty.benefits import schemas as s
from loyalty.benefits.catalogue import to_def, utcnow
from loyalty.errors import NotFound
from loyalty.facts.repository import load_facts
from loyalty.http.principal import Principal


@functools.lru_cache(maxsize=1024)
def parsed_rule(rule_json: str) -> rules.Rule:
    """Segment rules arrive as JSON text; parsing one is cached by its text."""
    return rules.parse_rule(msgspec.json.decode(rule_json))


def member_not_found(external_id: str) -> NotFound:
    return NotFound(
        "No member with this id in the programme.", code="member_not_found", extra={"member_id": external_id}
    )


async def member_id_of(conn: AsyncConnection, who: Principal, external_id: str) -> int:
    found = await repository.member(conn, who.programme_id, external_id)
    if found is None:
        raise member_not_found(external_id)
    return found[0]


async def sources_of(
    conn: AsyncConnection,
    programme_id: int,
    member_id: int,
    now: datetime,
    defs: dict[int, core.BenefitDef],
    *,
    only: core.BenefitDef | None = None,
    lock: bool = False,
) -> tuple[str | None, dict[int, list[core.Source]]]:
    """Every source of every benefit the member has now (or, with ``only``, of that one): tier,
    campaigns, grants, and what their upgrades bring. ``defs`` holds at least the programme's
    upgrade benefits (and ``only``). With ``lock`` the tier row and the grants relied on,
    upgrade grants included, are held FOR NO KEY UPDATE (see repository.active_grants)."""
    upgrade_ids = [b for b, d in defs.items() if d.type == "upgrade"]
    includes: dict[int, dict[str, dict[str, Any]]] | None = None
    ids: list[int] | None = None
    if only is not None:
        # An upgrade can bring the benefit only if some tier includes it; upgrades do not chain.
        if only.type == "upgrade":
            upgrade_ids = []
        includes = await repository.tier_map(conn, programme_id, only.id) if upgrade_ids else {}
        if not includes:
            upgrade_ids = []
        ids = [only.id, *upgrade_ids]
    found = await repository.member_tier(conn, programme_id, member_id, now, lock=lock)
    tier, stored_rank = found if found is not None else (None, 0)
    sources: dict[int, list[core.Source]] = {}
    if tier is not None:
        for b, params in (await repository.tier_benefit_params(conn, programme_id, tier, ids)).items():
            sources.setdefault(b, []).append(core.Source("tier", tier, params))
    running = await repository.active_campaigns(conn, programme_id, now, ids)
    if running:
        facts = await load_facts(conn, programme_id=programme_id, member_id=member_id, now=now)
        assert facts is not None
        for c in running:
            if rules.evaluate(parsed_rule(msgspec.json.encode(c["rule"]).decode()), facts):
                sources.setdefault(int(c["benefit_id"]), []).append(
                    core.Source("segment", c["code"], dict(c["params"]), c["ends_at"])
                )
    for g in await repository.active_grants(conn, programme_id, member_id, now, ids, lock=lock):
        sources.setdefault(int(g["benefit_id"]), []).append(
            core.Source("grant", str(g["id"]), dict(g["params"]), g["expires_at"])
        )
    upgrades = [(defs[b], x) for b in upgrade_ids if b in sources for x in sources[b]]
    if upgrades:
        ranks = await repository.ladder_ranks(conn, programme_id, now)
        lifts = core.lifts(upgrades, rank=core.member_rank(tier, stored_rank, ranks), ranks=ranks, now=now)
        if lifts:
            if includes is None:
                includes = await repository.tier_map(conn, programme_id)
            for b, by_tier in includes.items():
                benefit = defs.get(b)
                if benefit is None:
                    continue
                brought = core.through_upgrades(benefit, lifts, by_tier)
                if brought:
                    sources.setdefault(b, []).extend(brought)
    if only is not None:  # the upgrades were read only for what they bring
        sources = {only.id: sources[only.id]} if only.id in sources else {}
    return tier, sources


async def all_defs(conn: AsyncConnection, programme_id: int) -> dict[int, core.BenefitDef]:
    return {int(r["id"]): to_def(r) for r in await repository.all_benefits(conn, programme_id)}


async def with_upgrades(
    conn: AsyncConnection, programme_id: int, benefit: core.BenefitDef
) -> dict[int, core.BenefitDef]:
    """The benefit and the programme's upgrade benefits: what _sources needs for ``only``."""
    defs = {int(r["id"]): to_def(r) for r in await repository.upgrade_benefits(conn, programme_id)}
    defs[benefit.id] = benefit
    return defs


def source_view(source: core.Source) -> s.SourceView:
    via = source.via
    return s.SourceView(
        kind=source.kind,
        ref=source.ref,
        params=source.params,
        until=source.until,
        tier=source.tier,
        via=s.SourceRef(kind=via.kind, ref=via.ref, until=via.until) if via is not None else None,
    )


def source_ref(source: core.Source) -> dict[str, Any]:
    """A source as events name it: {kind, ref}, and for an upgrade the tier and its origin."""
    out: dict[str, Any] = {"kind": source.kind, "ref": source.ref}
    if source.via is not None:
        out["tier"] = source.tier
        out["via"] = {"kind": source.via.kind, "ref": source.via.ref}
    return out


async def member_entitlements(
    conn: AsyncConnection, programme_id: int, tz: str, member_id: int, now: datetime
) -> tuple[str | None, list[s.Entitlement]]:
    defs = await all_defs(conn, programme_id)
    tier, sources = await sources_of(conn, programme_id, member_id, now, defs)
    periods = {
        b: core.period_bounds(str(defs[b].params["period"]), now, tz)[0]
        for b in sources
        if b in defs and defs[b].type == "quota"
    }
    used = await repository.usage_in(conn, programme_id, member_id, periods)
    items: list[s.Entitlement] = []
    for b, found in sources.items():
        benefit = defs[b]
        decision = core.decide(benefit, found, used=used.get(b, 0), now=now, tz=tz, channel=None)
        if decision.source is None:  # inactive or out of its validity
            continue
        items.append(
            s.Entitlement(
                benefit=benefit.code,
                type=benefit.type,
                names=benefit.names,
                params=decision.params,
                source=source_view(decision.source),
                sources=[source_view(x) for x in found],
                channels=list(benefit.channels),
                limit=decision.limit,
                used=decision.used,
                remaining=decision.remaining,
                resets_at=decision.resets_at,
            )
        )
    items.sort(key=lambda e: e.benefit)
    return tier, items


async def entitlements(conn: AsyncConnection, who: Principal, external_id: str) -> s.Entitlements:
    member_id = await member_id_of(conn, who, external_id)
    tier, items = await member_entitlements(conn, who.programme_id, who.timezone, member_id, utcnow())
    return s.Entitlements(member_id=external_id, tier=tier, items=items)


async def multiplier_for(conn: AsyncConnection, programme_id: int, member_id: int, now: datetime) -> Fraction:
    """The member's best active points multiplier (1 without one), upgrades included."""
    defs = await all_defs(conn, programme_id)
    _, sources = await sources_of(conn, programme_id, member_id, now, defs)
    best = Fraction(1)
    for b, found in sources.items():
        benefit = defs[b]
        if benefit.type != "multiplier":
            continue
        decision = core.decide(benefit, found, used=0, now=now, tz="UTC", channel=None)
        if decision.allowed:
            best = max(best, core.multiplier_of(decision.params))
    return best

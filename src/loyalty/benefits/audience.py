"""Marketing's view of a benefit: who is entitled to it now (keyset pages) and how many, by
source, with the segment rules and upgrade paths compiled to SQL."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import rules
from loyalty.benefits import core, repository
from loyalty.benefits import schemas as s
from loyalty.benefits.catalogue import load_benefit, to_def, utcnow
from loyalty.benefits.entitlements import parsed_rule
from loyalty.errors import InvalidInput
from loyalty.http.principal import Principal


@dataclass(frozen=True, slots=True)
class _Whom:
    """Who gets a benefit, as the marketing SQL asks: the tiers including it, the rules of the
    running campaigns giving it, and the upgrade paths that bring it (ranks: the ladder in
    force)."""

    benefit_id: int
    tiers: list[str]
    segment_rules: list[rules.Rule]
    upgrades: list[repository.UpgradePath]
    ranks: dict[str, int]


async def who_gets(conn: AsyncConnection, who: Principal, code: str, now: datetime) -> _Whom:
    benefit = await load_benefit(conn, who, code)
    tier_map = await repository.tier_map(conn, who.programme_id)
    includes = tier_map.get(benefit.id, {})
    running = await repository.active_campaigns(conn, who.programme_id, now)
    segment_rules = [
        parsed_rule(msgspec.json.encode(c["rule"]).decode()) for c in running if c["benefit_id"] == benefit.id
    ]
    paths: list[repository.UpgradePath] = []
    ranks: dict[str, int] = {}
    if includes and benefit.type != "upgrade":
        upgrades = [
            u
            for u in map(to_def, await repository.upgrade_benefits(conn, who.programme_id))
            if core.availability(u, now, None) is None
        ]
        ranks = await repository.ladder_ranks(conn, who.programme_id, now) if upgrades else {}
        for upgrade in upgrades:
            default = str(upgrade.params.get("tier") or "")
            for tier in sorted(includes):
                if tier not in ranks:  # not on the ladder in force: lifts nobody (core.lifts)
                    continue
                via_tiers = tuple(
                    sorted(
                        t
                        for t, params in tier_map.get(upgrade.id, {}).items()
                        if core.upgrade_tier(upgrade, core.Source("tier", t, params)) == tier
                    )
                )
                campaign_rules = tuple(
                    parsed_rule(msgspec.json.encode(c["rule"]).decode())
                    for c in running
                    if c["benefit_id"] == upgrade.id
                    and core.upgrade_tier(upgrade, core.Source("segment", c["code"], dict(c["params"])))
                    == tier
                )
                paths.append(
                    repository.UpgradePath(upgrade.id, tier, ranks[tier], default, via_tiers, campaign_rules)
                )
    return _Whom(benefit.id, sorted(includes), segment_rules, paths, ranks)


async def entitled_members(
    conn: AsyncConnection, who: Principal, code: str, cursor: str | None, limit: int
) -> s.EntitledMembers:
    now = utcnow()
    whom = await who_gets(conn, who, code, now)
    after = _decode_cursor(cursor) if cursor else None
    ids = await repository.entitled_members(
        conn,
        who.programme_id,
        whom.benefit_id,
        whom.tiers,
        whom.segment_rules,
        now,
        after,
        limit + 1,
        upgrades=whom.upgrades,
        ranks=whom.ranks,
    )
    more = len(ids) > limit
    ids = ids[:limit]
    return s.EntitledMembers(items=ids, next_cursor=_encode_cursor(ids[-1]) if more and ids else None)


async def entitled_count(conn: AsyncConnection, who: Principal, code: str) -> s.EntitledCount:
    now = utcnow()
    whom = await who_gets(conn, who, code, now)
    counts = await repository.entitled_count(
        conn,
        who.programme_id,
        whom.benefit_id,
        whom.tiers,
        whom.segment_rules,
        now,
        upgrades=whom.upgrades,
        ranks=whom.ranks,
    )
    return s.EntitledCount(
        benefit=code,
        total=counts["total"],
        by_tier=counts["tier"],
        by_segment=counts["segment"],
        by_grant=counts["grant"],
        by_upgrade=counts["upgrade"],
    )


def _encode_cursor(external_id: str) -> str:
    return base64.urlsafe_b64encode(b"e:" + external_id.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    if not raw.startswith("e:") or len(raw) < 3:
        raise InvalidInput("cursor", "is not a cursor this API returned")
    return raw[2:]

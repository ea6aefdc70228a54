"""The checkout check, the hottest read: "may member M use benefit B for this order?".

One statement per check on the asyncpg pool (repository.CHECK_SQL) reads everything that can
change between two checks: the member's tier, grants and revocations, running campaigns with
their segment rules, the quota counter and the facts campaigns are evaluated on. Only the
catalogue (benefit definitions, tier -> benefit map) is cached per process, stamped with
benefit_catalogue_versions.version, which the same statement returns: when it moved, the
cache reloads and the check is decided again. So the cache can never make a check more
permissive than the database it just read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import asyncpg
import msgspec

from loyalty import rules
from loyalty.activity.facts import row_to_facts
from loyalty.auth.core import Principal
from loyalty.benefits import core, repository
from loyalty.benefits import schemas as s
from loyalty.benefits.service import parsed_rule, source_view
from loyalty.errors import InvalidInput, NotFound
from loyalty.web import require_role, send_json

_ENCODE = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder()


@dataclass(slots=True)
class Catalogue:
    version: int
    by_code: dict[str, core.BenefitDef]
    # benefit id -> tier code -> parameters the tier gives
    tiers: dict[int, dict[str, dict[str, Any]]]


@dataclass
class CatalogueCache:
    """Per process: programme id -> its catalogue at a version."""

    entries: dict[int, Catalogue] = field(default_factory=dict)
    reloads: int = 0

    async def load(self, conn: asyncpg.Connection, programme_id: int) -> Catalogue:
        version, rows, tier_rows = await repository.catalogue(conn, programme_id)
        by_code = {r["code"]: repository.catalogue_row(r) for r in rows}
        tiers: dict[int, dict[str, dict[str, Any]]] = {}
        for r in tier_rows:
            tiers.setdefault(int(r["benefit_id"]), {})[r["tier"]] = _DECODE.decode(r["params"])
        entry = Catalogue(version, by_code, tiers)
        self.entries[programme_id] = entry
        self.reloads += 1
        return entry


class _Row:
    """An asyncpg record seen as the SQLAlchemy row activity.facts.row_to_facts expects."""

    __slots__ = ("_mapping",)

    def __init__(self, record: asyncpg.Record) -> None:
        self._mapping = record

    def __getattr__(self, name: str) -> Any:
        return self._mapping[name]


def _sources(
    benefit: core.BenefitDef, catalogue: Catalogue, row: asyncpg.Record, now: datetime
) -> list[core.Source]:
    found: list[core.Source] = []
    tier = row["tier"]
    if tier is not None:
        params = catalogue.tiers.get(benefit.id, {}).get(tier)
        if params is not None:
            found.append(core.Source("tier", tier, params))
    if row["campaigns"] is not None:
        facts = row_to_facts(_Row(row), now=now)
        for c in _DECODE.decode(row["campaigns"]):
            if rules.evaluate(parsed_rule(_ENCODE.encode(c["rule"]).decode()), facts):
                found.append(core.Source("segment", c["code"], c["params"], _time(c["ends_at"])))
    if row["grants"] is not None:
        for g in _DECODE.decode(row["grants"]):
            found.append(core.Source("grant", str(g["id"]), g["params"], _time(g["expires_at"])))
    return found


def _time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


async def _read(
    conn: asyncpg.Connection, catalogue: Catalogue, who: Principal, code: str, external_id: str, now: datetime
) -> tuple[core.BenefitDef, asyncpg.Record]:
    benefit = catalogue.by_code.get(code)
    if benefit is None:
        raise NotFound("No benefit with this code.", code="benefit_not_found", extra={"benefit": code})
    period_start = (
        core.period_bounds(str(benefit.params["period"]), now, who.timezone)[0]
        if benefit.type == "quota"
        else None
    )
    row = await repository.check_row(conn, who.programme_id, external_id, benefit.id, now, period_start)
    if row is None:
        raise NotFound(
            "No member with this id in the programme.",
            code="member_not_found",
            extra={"member_id": external_id},
        )
    return benefit, row


async def check(
    conn: asyncpg.Connection,
    cache: CatalogueCache,
    who: Principal,
    code: str,
    external_id: str,
    channel: str | None,
) -> s.CheckResult:
    now = datetime.now(UTC)
    catalogue = cache.entries.get(who.programme_id)
    if catalogue is None or code not in catalogue.by_code:
        catalogue = await cache.load(conn, who.programme_id)
    benefit, row = await _read(conn, catalogue, who, code, external_id, now)
    for _ in range(3):
        if (row["version"] or 0) == catalogue.version:
            break
        # The catalogue moved since it was cached: reload and read again.
        catalogue = await cache.load(conn, who.programme_id)
        benefit, row = await _read(conn, catalogue, who, code, external_id, now)
    if row["status"] != "active":
        return s.CheckResult(member_id=external_id, benefit=code, allowed=False, reason="member_not_active")
    decision = core.decide(
        benefit,
        _sources(benefit, catalogue, row, now),
        used=row["used"] or 0,
        now=now,
        tz=who.timezone,
        channel=channel,
    )
    return s.CheckResult(
        member_id=external_id,
        benefit=code,
        allowed=decision.allowed,
        reason=decision.reason,
        source=source_view(decision.source) if decision.source else None,
        params=decision.params or None,
        limit=decision.limit,
        remaining=decision.remaining,
        resets_at=decision.resets_at,
    )


class CheckLane:
    """Route-level ASGI middleware serving GET /v1/benefits/{code}/check like web.PostingLane
    serves postings: role check, query parsing, one pooled asyncpg statement, msgspec JSON out,
    without Litestar's per-request DI, signature model and response machinery. The handler
    behind it documents the route in OpenAPI and is never reached; errors are raised so the
    one problem map answers them."""

    def __init__(self, app: Any, *, roles: tuple[str, ...]) -> None:
        self.app = app
        self.roles = roles

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        principal: Principal = scope["user"]
        require_role(principal, self.roles)
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        member = query.get("member_id")
        if not member or len(member) > 128:
            raise InvalidInput("member_id", "is required (the brand's customer id, 1 to 128 characters)")
        channel = query.get("channel") or None
        state = scope["litestar_app"].state
        pool: asyncpg.Pool = state.posting_pool
        async with pool.acquire() as conn:
            result = await check(
                conn, state.benefit_catalogues, principal, scope["path_params"]["code"], member, channel
            )
        await send_json(send, 200, _ENCODE.encode(result))

"""The checkout check, the hottest read: "may member M use benefit B for this order?".

One statement per check on the asyncpg pool (repository.CHECK_SQL) reads everything that can
change between two checks: the member's tier, grants and revocations, running campaigns with
their segment rules, the quota counter and the facts campaigns are evaluated on, and, when an
upgrade benefit could bring the benefit, the member's upgrade grants and campaigns and the
ranks of the ladder in force. Only the catalogue (benefit definitions, tier -> benefit map) is
cached per process, stamped with benefit_catalogue_versions.version, which the same statement
returns: when it moved, the cache reloads and the check is decided again. So the cache can
never make a check more permissive than the database it just read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar.params import FromPath, QueryParameter

from loyalty import rules
from loyalty.benefits import core, repository
from loyalty.benefits import schemas as s
from loyalty.benefits.entitlements import parsed_rule, source_view
from loyalty.errors import NotFound
from loyalty.facts.repository import row_to_facts
from loyalty.http.fast_routes import Arguments, FastRoute, Reply
from loyalty.http.principal import Principal
from loyalty.rules.facts import Facts

_ENCODE = msgspec.json.Encoder()
_DECODE = msgspec.json.Decoder()


@dataclass(slots=True)
class Catalogue:
    version: int
    by_code: dict[str, core.BenefitDef]
    # benefit id -> tier code -> parameters the tier gives
    tiers: dict[int, dict[str, dict[str, Any]]]
    by_id: dict[int, core.BenefitDef] = field(default_factory=dict)
    # The upgrade benefits, and the tiers that include one of them.
    upgrades: tuple[core.BenefitDef, ...] = ()
    upgrade_tiers: tuple[str, ...] = ()

    def upgrade_filter(self, benefit: core.BenefitDef) -> tuple[list[int], list[str]]:
        """The upgrade benefits that could bring ``benefit`` and the tiers including one, for
        the check's statement; empty when no tier includes ``benefit`` (then no upgrade can
        bring it) or it is an upgrade itself (upgrades do not chain)."""
        if not self.upgrades or benefit.type == "upgrade" or not self.tiers.get(benefit.id):
            return [], []
        return [u.id for u in self.upgrades], list(self.upgrade_tiers)


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
        upgrades = tuple(b for b in by_code.values() if b.type == "upgrade")
        upgrade_tiers = tuple(sorted({t for u in upgrades for t in tiers.get(u.id, {})}))
        by_id = {b.id: b for b in by_code.values()}
        entry = Catalogue(version, by_code, tiers, by_id, upgrades, upgrade_tiers)
        self.entries[programme_id] = entry
        self.reloads += 1
        return entry


class _Row:
    """An asyncpg record seen as the SQLAlchemy row facts.repository.row_to_facts expects."""

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
    facts: Facts | None = None
    if row["campaigns"] is not None:
        facts = row_to_facts(_Row(row), now=now)
        for c in _DECODE.decode(row["campaigns"]):
            if rules.evaluate(parsed_rule(_ENCODE.encode(c["rule"]).decode()), facts):
                found.append(core.Source("segment", c["code"], c["params"], _time(c["ends_at"])))
    if row["grants"] is not None:
        for g in _DECODE.decode(row["grants"]):
            found.append(core.Source("grant", str(g["id"]), g["params"], _time(g["expires_at"])))
    if row["ranks"] is not None:
        found.extend(_upgraded(benefit, catalogue, row, facts, now))
    return found


def _upgraded(
    benefit: core.BenefitDef, catalogue: Catalogue, row: asyncpg.Record, facts: Facts | None, now: datetime
) -> list[core.Source]:
    """What the member's upgrades bring of ``benefit`` (core.lifts, core.through_upgrades)."""
    tier = row["tier"]
    upgrades: list[tuple[core.BenefitDef, core.Source]] = []
    if tier is not None:
        for upgrade in catalogue.upgrades:
            params = catalogue.tiers.get(upgrade.id, {}).get(tier)
            if params is not None:
                upgrades.append((upgrade, core.Source("tier", tier, params)))
    for u in _DECODE.decode(row["upgrades"]) if row["upgrades"] is not None else ():
        given = catalogue.by_id.get(int(u["benefit_id"]))
        if given is None:  # created after the cache was loaded: the version check reloads it
            continue
        if u["kind"] == "segment":
            if facts is None:
                facts = row_to_facts(_Row(row), now=now)
            if not rules.evaluate(parsed_rule(_ENCODE.encode(u["rule"]).decode()), facts):
                continue
        upgrades.append((given, core.Source(u["kind"], u["ref"], u["params"], _time(u["until"]))))
    ranks: dict[str, int] = _DECODE.decode(row["ranks"])
    lifts = core.lifts(upgrades, rank=core.member_rank(tier, row["tier_rank"], ranks), ranks=ranks, now=now)
    return core.through_upgrades(benefit, lifts, catalogue.tiers.get(benefit.id, {}))


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
    upgrade_ids, upgrade_tiers = catalogue.upgrade_filter(benefit)
    row = await repository.check_row(
        conn, who.programme_id, external_id, benefit.id, now, period_start, upgrade_ids, upgrade_tiers
    )
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


# Who may check: the shop's checkout, and operators.
CHECKOUT_ROLES = ("ecommerce", "operator")


async def _check(conn: asyncpg.Connection, who: Principal, args: Arguments) -> Reply:
    result = await check(
        conn,
        args.state.benefit_catalogues,
        who,
        args.path["code"],
        args.query["member_id"] or "",  # required: the lane refused a missing one
        args.query["channel"],
    )
    return Reply(False, _ENCODE.encode(result))


CHECK_BENEFIT = FastRoute(
    method="GET",
    path="/v1/benefits/{code:str}/check",
    summary="May this member use the benefit now (on this channel)? Yes/no, the reason, the quota left.",
    roles=CHECKOUT_ROLES,
    result=s.CheckResult,
    call=_check,
    path_params={"code": FromPath[str]},
    query={
        "member_id": Annotated[
            str, QueryParameter(min_length=1, max_length=128, description="The brand's customer id.")
        ],
        "channel": Annotated[
            str | None,
            QueryParameter(max_length=50, description="Where the order is placed (web, app, store ...)."),
        ],
    },
    status=200,
    idempotent=False,
    connection="read",
    tags=("benefits",),
    description="The decision",
)

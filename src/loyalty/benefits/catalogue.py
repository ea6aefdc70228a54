"""The benefit catalogue: definitions (their type, parameters, texts, validity, channels) and
what each tier includes. Every write bumps the catalogue version the checkout caches follow.
Never commits: the caller's transaction owns it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.benefits import core, repository
from loyalty.benefits import schemas as s
from loyalty.errors import InvalidInput, NotFound
from loyalty.http.principal import Principal

REQUIRED_LANGUAGES = ("en", "zh-CN")


def utcnow() -> datetime:
    """The clock every benefit use case reads (UTC-aware)."""
    return datetime.now(UTC)


def benefit_not_found(code: str) -> NotFound:
    return NotFound("No benefit with this code.", code="benefit_not_found", extra={"benefit": code})


def to_def(row: dict[str, Any]) -> core.BenefitDef:
    return core.BenefitDef(
        id=int(row["id"]),
        code=row["code"],
        type=row["type"],
        params=dict(row["params"]),
        channels=tuple(row["channels"] or ()),
        valid_from=row["valid_from"],
        valid_until=row["valid_until"],
        active=bool(row["active"]),
        names=dict(row["names"]),
        descriptions=dict(row["descriptions"]),
    )


def to_view(row: dict[str, Any]) -> s.BenefitView:
    return s.BenefitView(**{k: v for k, v in row.items() if k != "id"})


def override_params(benefit: core.BenefitDef, override: dict[str, Any], path: str) -> dict[str, Any]:
    """A tier, campaign or grant may override the benefit's parameters; a quota's period stays
    the benefit's own (one usage row per period), only its limit may change."""
    if benefit.type == "quota" and set(override) - {"limit"}:
        raise InvalidInput(path, "a quota source may only override limit")
    core.check_params(benefit.type, core.merged(benefit.params, override), path)
    return dict(override)


async def check_upgrade_tier(
    conn: AsyncConnection, who: Principal, params: dict[str, Any], path: str
) -> None:
    """An upgrade's tier must be on the programme's published ladder (the one in force or one
    published to take over later). Without any published ladder there is nothing to check
    against: the tier is accepted and the upgrade brings nothing until a ladder has it."""
    codes = await repository.ladder_tier_codes(conn, who.programme_id, utcnow())
    if codes is not None and params.get("tier") not in codes:
        raise InvalidInput(f"{path}.tier", "is not a tier of the programme's published ladder")


async def source_params(
    conn: AsyncConnection, who: Principal, benefit: core.BenefitDef, override: dict[str, Any], path: str
) -> dict[str, Any]:
    """override_params, and for an upgrade the check of the tier it treats the member as."""
    params = override_params(benefit, override, path)
    if benefit.type == "upgrade":
        await check_upgrade_tier(conn, who, core.merged(benefit.params, params), path)
    return params


def _check_texts(names: dict[str, str], field: str) -> None:
    missing = [lang for lang in REQUIRED_LANGUAGES if not names.get(lang)]
    if missing:
        raise InvalidInput(field, f"needs a text in {', '.join(missing)}")


def _check_validity(valid_from: datetime | None, valid_until: datetime | None) -> None:
    if valid_from is not None and valid_until is not None and valid_until <= valid_from:
        raise InvalidInput("valid_until", "must be after valid_from")


async def create(conn: AsyncConnection, who: Principal, req: s.BenefitCreate) -> s.BenefitView:
    _check_texts(req.names, "names")
    _check_validity(req.valid_from, req.valid_until)
    params = core.check_params(req.type, req.params)
    if req.type == "upgrade":
        await check_upgrade_tier(conn, who, params, "params")
    row = await repository.create_benefit(
        conn,
        who.programme_id,
        {
            "code": req.code,
            "type": req.type,
            "names": req.names,
            "descriptions": req.descriptions,
            "params": params,
            "channels": req.channels,
            "valid_from": req.valid_from,
            "valid_until": req.valid_until,
        },
    )
    view = to_view(row)
    await audit.record(conn, who, action="benefit.create", entity="benefit", entity_id=req.code, after=view)
    return view


async def load_benefit(conn: AsyncConnection, who: Principal, code: str) -> core.BenefitDef:
    row = await repository.benefit(conn, who.programme_id, code)
    if row is None:
        raise benefit_not_found(code)
    return to_def(row)


async def get(conn: AsyncConnection, who: Principal, code: str) -> s.BenefitView:
    row = await repository.benefit(conn, who.programme_id, code)
    if row is None:
        raise benefit_not_found(code)
    return to_view(row)


async def list_all(conn: AsyncConnection, who: Principal) -> s.BenefitList:
    return s.BenefitList(items=[to_view(r) for r in await repository.all_benefits(conn, who.programme_id)])


async def update(conn: AsyncConnection, who: Principal, code: str, req: s.BenefitUpdate) -> s.BenefitView:
    current_row = await repository.benefit(conn, who.programme_id, code)
    if current_row is None:
        raise benefit_not_found(code)
    current = to_def(current_row)
    values = {k: v for k, v in msgspec.structs.asdict(req).items() if v is not None}
    if req.names is not None:
        _check_texts(req.names, "names")
    if req.params is not None:
        if current.type == "quota" and req.params.get("period") != current.params.get("period"):
            raise InvalidInput(
                "params.period", "the period of a quota cannot change (usage is kept per period)"
            )
        values["params"] = core.check_params(current.type, req.params)
        if current.type == "upgrade":
            await check_upgrade_tier(conn, who, values["params"], "params")
    _check_validity(req.valid_from or current.valid_from, req.valid_until or current.valid_until)
    row = await repository.update_benefit(conn, who.programme_id, code, values)
    assert row is not None
    view = to_view(row)
    await audit.record(
        conn,
        who,
        action="benefit.update",
        entity="benefit",
        entity_id=code,
        before=to_view(current_row),
        after=view,
    )
    return view


async def set_tier_benefits(
    conn: AsyncConnection, who: Principal, tier: str, req: s.TierBenefitsSet
) -> s.TierBenefitList:
    """Replaces what a tier includes. The ladder definition is not touched: the tier code is
    the link, so a benefit set for a tier that is not (yet) on the ladder simply applies to nobody."""
    items: list[tuple[int, dict[str, Any]]] = []
    for i, item in enumerate(req.benefits):
        benefit = await load_benefit(conn, who, item.benefit)
        items.append(
            (benefit.id, await source_params(conn, who, benefit, item.params, f"benefits[{i}].params"))
        )
    if len({b for b, _ in items}) != len(items):
        raise InvalidInput("benefits", "a benefit is listed twice")
    before = await list_tier_benefits(conn, who)
    await repository.set_tier_benefits(conn, who.programme_id, tier, items)
    after = await list_tier_benefits(conn, who)
    await audit.record(
        conn,
        who,
        action="tier_benefits.set",
        entity="tier",
        entity_id=tier,
        before=_of_tier(before, tier),
        after=_of_tier(after, tier),
    )
    return after


def _of_tier(listing: s.TierBenefitList, tier: str) -> dict[str, Any]:
    return {"benefits": [{"benefit": i.benefit, "params": i.params} for i in listing.items if i.tier == tier]}


async def list_tier_benefits(conn: AsyncConnection, who: Principal) -> s.TierBenefitList:
    rows = await repository.all_tier_benefits(conn, who.programme_id)
    return s.TierBenefitList(
        items=[s.TierBenefitView(tier=r["tier"], benefit=r["code"], params=r["params"]) for r in rows]
    )

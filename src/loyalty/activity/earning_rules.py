"""Earning rule administration: create, change, deactivate, read; each change audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.activity import core, repository
from loyalty.activity import schemas as s
from loyalty.errors import Conflict, InvalidInput, NotFound
from loyalty.http.principal import Principal
from loyalty.programmes import repository as programmes
from loyalty.rules import parse_rule


def _rule_not_found(code: str) -> NotFound:
    return NotFound("No earning rule with this code.", code="earning_rule_not_found", extra={"rule": code})


def _rule_view(row: dict[str, Any]) -> s.EarningRuleView:
    return s.EarningRuleView(**{k: v for k, v in row.items() if k != "id"})


async def check_rule(conn: AsyncConnection, who: Principal, values: dict[str, Any]) -> None:
    settings = await repository.settings(conn, who.programme_id)
    try:
        core.check_event_type(values["event_type"], settings["custom_event_types"])
    except InvalidInput as exc:
        raise InvalidInput("event_type", exc.reason) from None
    if values["event_type"] == "order_refunded":
        raise InvalidInput("event_type", "refunds claw back what the order earned; they earn nothing")
    parse_rule(values["condition"], path="condition")
    core.check_event_filter(values["event_filter"])
    formula = core.parse_formula(values["formula"])
    if formula.kind == "per_unit" and values["event_type"] not in core.ORDER_TYPES:
        raise InvalidInput("formula.kind", "per_unit needs an amount: only order_completed events carry one")
    for field in ("starts_at", "ends_at"):
        if values[field] is not None and values[field].tzinfo is None:
            raise InvalidInput(field, "must carry a time zone offset")
    if values["starts_at"] and values["ends_at"] and values["ends_at"] <= values["starts_at"]:
        raise InvalidInput("ends_at", "must be after starts_at")
    if not await repository.budget_exists(conn, who.programme_id, values["budget"]):
        raise InvalidInput("budget", f"no budget {values['budget']!r} in the programme")


async def create_rule(conn: AsyncConnection, who: Principal, req: s.EarningRuleIn) -> s.EarningRuleView:
    values = msgspec.to_builtins(req, builtin_types=(datetime,))
    await check_rule(conn, who, values)
    row = await repository.insert_rule(conn, who.programme_id, values)
    if row is None:
        raise Conflict(
            "An earning rule with this code exists.", code="earning_rule_exists", extra={"rule": req.code}
        )
    # The config tables carry no config_version trigger on Citus (docs/scaling.md).
    await programmes.bump_config_version(conn, who.programme_id)
    view = _rule_view(row)
    await audit.record(
        conn, who, action="earning_rule.create", entity="earning_rule", entity_id=req.code, after=view
    )
    return view


async def update_rule(
    conn: AsyncConnection,
    who: Principal,
    code: str,
    req: s.EarningRulePatch,
    *,
    action: str = "earning_rule.update",
) -> s.EarningRuleView:
    current = await repository.rule(conn, who.programme_id, code, lock=True)
    if current is None:
        raise _rule_not_found(code)
    values = {k: v for k, v in current.items() if k not in ("id", "created_at", "updated_at")}
    for field in req.__struct_fields__:
        value = getattr(req, field)
        if value is not None:
            values[field] = msgspec.to_builtins(value) if field == "expiry" else value
    for cap in ("cap_per_day", "cap_per_month"):
        if values[cap] == 0:
            values[cap] = None  # 0 removes the cap
    await check_rule(conn, who, values)
    row = await repository.update_rule(conn, who.programme_id, values)
    assert row is not None
    await programmes.bump_config_version(conn, who.programme_id)
    view = _rule_view(row)
    before = _rule_view(current)
    await audit.record(
        conn, who, action=action, entity="earning_rule", entity_id=code, before=before, after=view
    )
    return view


async def deactivate_rule(conn: AsyncConnection, who: Principal, code: str) -> s.EarningRuleView:
    return await update_rule(
        conn, who, code, s.EarningRulePatch(active=False), action="earning_rule.deactivate"
    )


async def get_rule(conn: AsyncConnection, who: Principal, code: str) -> s.EarningRuleView:
    row = await repository.rule(conn, who.programme_id, code)
    if row is None:
        raise _rule_not_found(code)
    return _rule_view(row)


async def list_rules(conn: AsyncConnection, who: Principal) -> list[s.EarningRuleView]:
    return [_rule_view(r) for r in await repository.rules(conn, who.programme_id)]

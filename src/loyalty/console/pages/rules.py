"""Earning rules: the list, the editor (the rule language as form fields), simulating an event
against a draft rule, activating and deactivating, and the replay of a draft rule set over a
past period (a background job with a progress bar, then its charts and tables)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from loyalty.activity import core as activity_core
from loyalty.activity import replay, replay_tasks
from loyalty.activity import schemas as s
from loyalty.activity import service as activity
from loyalty.console.web import (
    NavEntry,
    current,
    errors_of,
    form_data,
    is_htmx,
    needs,
    parse,
    reading,
    render,
    see_other,
    transaction,
    utc_moment,
)
from loyalty.errors import DomainError, InvalidInput
from loyalty.ledger import service as ledger

FILTER_LISTS = ("channels", "categories", "skus")
# The editor's fields, named as the domain names them, so that a refusal (InvalidInput's
# field, e.g. "formula.per") lands next to the input it is about.
FIELDS = (
    "code", "name", "event_type", "condition", "formula.kind", "formula.points", "formula.per",
    "formula.multiplier", "event_filter.min_amount", "event_filter.max_amount", "event_filter.currency",
    "event_filter.channels", "event_filter.categories", "event_filter.skus", "cap_per_day",
    "cap_per_month", "budget", "pending_days", "expiry.days", "qualifying", "priority", "starts_at",
    "ends_at",
)  # fmt: skip
SIM_FIELDS = ("member_id", "type", "amount", "currency", "order_ref", "channel")
REPLAY_DAYS = 90


def placed(errors: dict[str, str], fields: tuple[str, ...]) -> dict[str, str]:
    """Errors keyed by the form field they belong to: a deeper path (``condition.all[0].fact``)
    goes to the field it starts with, with the path kept in the message; others to ``_form``."""
    out: dict[str, str] = {}
    for key, message in errors.items():
        if key in fields or key == "_form":
            out[key] = message
            continue
        owner = next((f for f in sorted(fields, key=len, reverse=True) if key.startswith(f)), None)
        out[owner or "_form"] = f"{key}: {message}"
    return out


def _int_or_text(value: str) -> int | str:
    stripped = value.strip()
    try:
        return int(stripped)
    except ValueError:
        return stripped


def rule_values(values: dict[str, str]) -> dict[str, Any]:
    """The editor's strings as an earning rule in the API's shape (validated by the domain)."""
    raw_condition = values.get("condition", "").strip() or "true"
    try:
        condition = json.loads(raw_condition)
    except json.JSONDecodeError as exc:
        raise InvalidInput("condition", f"is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    kind = values.get("formula.kind", "")
    formula: dict[str, Any] = {"kind": kind, "points": _int_or_text(values.get("formula.points", ""))}
    if kind == "per_unit":
        formula["per"] = _int_or_text(values.get("formula.per", ""))
    if values.get("formula.multiplier", "").strip():
        formula["multiplier"] = values["formula.multiplier"].strip()
    event_filter: dict[str, Any] = {}
    for key in ("min_amount", "max_amount"):
        if values.get(f"event_filter.{key}", "").strip():
            event_filter[key] = _int_or_text(values[f"event_filter.{key}"])
    if values.get("event_filter.currency", "").strip():
        event_filter["currency"] = values["event_filter.currency"].strip().upper()
    for key in FILTER_LISTS:
        listed = [v.strip() for v in values.get(f"event_filter.{key}", "").split(",") if v.strip()]
        if listed:
            event_filter[key] = listed
    out: dict[str, Any] = {
        "code": values.get("code", "").strip(),
        "name": values.get("name", "").strip(),
        "event_type": values.get("event_type", ""),
        "condition": condition,
        "event_filter": event_filter,
        "formula": formula,
        "budget": values.get("budget", ""),
        "qualifying": values.get("qualifying") == "on",
        "priority": values.get("priority", "").strip() or "100",
        "pending_days": values.get("pending_days", "").strip() or "0",
        "starts_at": utc_moment("starts_at", values.get("starts_at", "")),
        "ends_at": utc_moment("ends_at", values.get("ends_at", "")),
    }
    for cap in ("cap_per_day", "cap_per_month"):
        if values.get(cap, "").strip():
            out[cap] = values[cap].strip()
    if values.get("expiry.days", "").strip():
        out["expiry"] = {"days": values["expiry.days"].strip()}
    return out


def _parse_rule(values: dict[str, Any]) -> s.EarningRuleIn:
    try:
        return parse(values, s.EarningRuleIn)
    except InvalidInput as exc:
        if exc.field == "expiry":
            raise InvalidInput("expiry.days", exc.reason) from None
        raise


def form_of(rule: s.EarningRuleView | None) -> dict[str, str]:
    """A stored rule as the editor's strings (a new rule's defaults when None)."""
    if rule is None:
        return {"condition": "true", "formula.kind": "per_unit", "formula.per": "100", "priority": "100",
                "pending_days": "0", "qualifying": "on", "event_type": "order_completed"}  # fmt: skip
    formula, event_filter = rule.formula, rule.event_filter
    out = {
        "code": rule.code,
        "name": rule.name,
        "event_type": rule.event_type,
        "condition": json.dumps(rule.condition, indent=2, ensure_ascii=False),
        "formula.kind": str(formula.get("kind", "")),
        "formula.points": str(formula.get("points", "")),
        "formula.per": str(formula.get("per", "")),
        "formula.multiplier": str(formula.get("multiplier", "")),
        "event_filter.min_amount": str(event_filter.get("min_amount", "")),
        "event_filter.max_amount": str(event_filter.get("max_amount", "")),
        "event_filter.currency": str(event_filter.get("currency", "")),
        "cap_per_day": "" if rule.cap_per_day is None else str(rule.cap_per_day),
        "cap_per_month": "" if rule.cap_per_month is None else str(rule.cap_per_month),
        "budget": rule.budget,
        "pending_days": str(rule.pending_days),
        "expiry.days": str((rule.expiry or {}).get("days", "")),
        "qualifying": "on" if rule.qualifying else "",
        "priority": str(rule.priority),
        "starts_at": rule.starts_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if rule.starts_at else "",
        "ends_at": rule.ends_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if rule.ends_at else "",
    }
    for key in FILTER_LISTS:
        out[f"event_filter.{key}"] = ", ".join(event_filter.get(key, []))
    return out


def money(micros: int) -> str:
    """Millionths of the currency, shown to the cent."""
    return f"{micros / 1_000_000:,.2f}"


async def _choices(request: Request[Any, Any, Any]) -> dict[str, Any]:
    who = current(request).principal()
    async with reading(request) as conn:
        budgets = await ledger.list_budgets(conn, who)
        settings = await activity.get_settings(conn, who)
    types = [
        t for t in (*activity_core.BUILTIN_EVENT_TYPES, *settings.custom_event_types) if t != "order_refunded"
    ]
    return {
        "budgets": [(b.code, f"{b.code} ({money(b.unit_cost_micros)} a point)") for b in budgets],
        "event_types": types,
    }


# List --------------------------------------------------------------------------------------


@get("/rules", name="console-rules")
async def rules_list(request: Request[Any, Any, Any]) -> Template:
    who = current(request).principal()
    async with reading(request) as conn:
        rules = await activity.list_rules(conn, who)
    return render(
        request,
        "rules/list.html",
        active=[r for r in rules if r.active],
        drafts=[r for r in rules if not r.active],
    )


# Editor ------------------------------------------------------------------------------------


@get("/rules/new", name="console-rule-new")
async def rule_new(request: Request[Any, Any, Any]) -> Template:
    return render(
        request, "rules/edit.html", rule=None, form=form_of(None), errors={}, **await _choices(request)
    )


@post("/rules", name="console-rule-create", opt=needs("rules"))
async def rule_create(request: Request[Any, Any, Any]) -> Response[Any]:
    """A new rule is a draft (inactive) until it is activated."""
    values = await form_data(request)
    who = current(request).principal()
    try:
        req = _parse_rule(rule_values(values))
        async with transaction(request) as conn:
            await activity.create_rule(conn, who, req)
            await activity.update_rule(conn, who, req.code, s.EarningRulePatch(active=False))
    except DomainError as exc:
        status = 409 if exc.code == "earning_rule_exists" else 400
        errors = placed(errors_of(exc), FIELDS)
        if exc.code == "earning_rule_exists":
            errors = {"code": exc.detail}
        return render(
            request, "rules/edit.html", status_code=status, rule=None, form=values, errors=errors,
            **await _choices(request),
        )  # fmt: skip
    return see_other(request, f"/console/rules/{req.code}")


async def _rule_page(
    request: Request[Any, Any, Any],
    code: str,
    *,
    form: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
    sim_form: dict[str, str] | None = None,
    sim_errors: dict[str, str] | None = None,
    simulation: dict[str, Any] | None = None,
) -> Template:
    who = current(request).principal()
    async with reading(request) as conn:
        rule = await activity.get_rule(conn, who, code)
    return render(
        request,
        "rules/edit.html",
        status_code=status_code,
        rule=rule,
        form=form if form is not None else form_of(rule),
        errors=errors or {},
        sim_form=sim_form
        or {
            "type": rule.event_type,
            "amount": "10000" if rule.event_type in activity_core.ORDER_TYPES else "",
        },
        sim_errors=sim_errors or {},
        simulation=simulation,
        **await _choices(request),
    )


@get("/rules/{code:str}", name="console-rule")
async def rule_show(request: Request[Any, Any, Any], code: FromPath[str]) -> Template:
    return await _rule_page(request, code)


def _patch_of(values: dict[str, Any]) -> s.EarningRulePatch:
    """The editor's rule as a change of every field it shows (an empty cap removes the cap)."""
    full = {k: v for k, v in values.items() if k not in ("code", "event_type")}  # both fixed
    for cap in ("cap_per_day", "cap_per_month"):
        full.setdefault(cap, "0")
    return parse(full, s.EarningRulePatch)


@post("/rules/{code:str}", name="console-rule-update", opt=needs("rules"))
async def rule_update(request: Request[Any, Any, Any], code: FromPath[str]) -> Response[Any]:
    values = await form_data(request)
    who = current(request).principal()
    try:
        rule = rule_values({**values, "code": code})
        _parse_rule(rule)  # the same checks as a new rule's, field by field
        async with transaction(request) as conn:
            await activity.update_rule(conn, who, code, _patch_of(rule))
    except DomainError as exc:
        return await _rule_page(
            request,
            code,
            form={**values, "code": code},
            errors=placed(errors_of(exc), FIELDS),
            status_code=400,
        )
    return see_other(request, f"/console/rules/{code}")


@post("/rules/{code:str}/activate", name="console-rule-activate", opt=needs("rules"))
async def rule_activate(request: Request[Any, Any, Any], code: FromPath[str]) -> Response[Any]:
    async with transaction(request) as conn:
        await activity.update_rule(conn, current(request).principal(), code, s.EarningRulePatch(active=True))
    return see_other(request, f"/console/rules/{code}")


@post("/rules/{code:str}/deactivate", name="console-rule-deactivate", opt=needs("rules"))
async def rule_deactivate(request: Request[Any, Any, Any], code: FromPath[str]) -> Response[Any]:
    async with transaction(request) as conn:
        await activity.deactivate_rule(conn, current(request).principal(), code)
    return see_other(request, f"/console/rules/{code}")


# Simulation --------------------------------------------------------------------------------


def _event_of(values: dict[str, str]) -> s.EventIn:
    raw: dict[str, Any] = {k: values.get(k, "").strip() for k in SIM_FIELDS}
    raw["event_id"] = f"console-simulation-{uuid.uuid4().hex}"
    if raw["type"] in activity_core.ORDER_TYPES and not raw["order_ref"]:
        raw["order_ref"] = raw["event_id"]
    if raw["currency"]:
        raw["currency"] = raw["currency"].upper()
    return parse(raw, s.EventIn)


async def simulate_draft(request: Request[Any, Any, Any], code: str, event: s.EventIn) -> dict[str, Any]:
    """The event as the live path would record it with this rule in force (a draft is switched
    on for the simulation only): each rule's outcome, the points and their cost. Everything
    runs in a transaction that is rolled back."""
    who = current(request).principal()
    async with reading(request) as conn:
        try:
            rule = await activity.get_rule(conn, who, code)
            if not rule.active:
                await activity.update_rule(conn, who, code, s.EarningRulePatch(active=True))
            result = await activity.simulate(conn, who, event)
            rules = {r.code: r.budget for r in await activity.list_rules(conn, who)}
            costs = {b.code: b.unit_cost_micros for b in await ledger.list_budgets(conn, who)}
        finally:
            await conn.rollback()
    outcomes = []
    total_micros = 0
    for outcome in result.rules:
        budget = rules.get(outcome.code, "")
        micros = outcome.points * costs.get(budget, 0)
        total_micros += micros
        outcomes.append(
            {"outcome": outcome, "budget": budget, "cost": money(micros), "this": outcome.code == code}
        )
    fired = [o.code for o in result.rules if o.points > 0]
    return {
        "result": result,
        "outcomes": outcomes,
        "fired": fired,
        "cost": money(total_micros),
        "cost_micros": total_micros,
        "draft": not rule.active,
    }


@post("/rules/{code:str}/simulate", name="console-rule-simulate", opt=needs("read"))
async def rule_simulate(request: Request[Any, Any, Any], code: FromPath[str]) -> Template:
    """Writes nothing, so every role that reads may simulate."""
    values = await form_data(request)
    try:
        simulation = await simulate_draft(request, code, _event_of(values))
    except DomainError as exc:
        errors = placed(errors_of(exc), SIM_FIELDS)
        if is_htmx(request):
            return render(request, "rules/simulation.html", status_code=400, sim_form=values, sim_errors=errors,
                          simulation=None, rule_code=code)  # fmt: skip
        return await _rule_page(request, code, sim_form=values, sim_errors=errors, status_code=400)
    if is_htmx(request):
        return render(request, "rules/simulation.html", sim_form=values, sim_errors={}, simulation=simulation,
                      rule_code=code)  # fmt: skip
    return await _rule_page(request, code, sim_form=values, simulation=simulation)


# Replay ------------------------------------------------------------------------------------


def _replay_defaults(today: date) -> dict[str, str]:
    return {
        "since": (today - timedelta(days=REPLAY_DAYS)).isoformat(),
        "until": today.isoformat(),
        "top": "10",
    }


def _day(field: str, value: str) -> date:
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(field, "expected a date such as 2026-12-01") from None


async def _replay_form(
    request: Request[Any, Any, Any],
    *,
    form: dict[str, str] | None = None,
    chosen: list[str] | None = None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Template:
    who = current(request).principal()
    async with reading(request) as conn:
        rules = await activity.list_rules(conn, who)
    return render(
        request,
        "rules/replay.html",
        status_code=status_code,
        rules=rules,
        chosen=chosen if chosen is not None else [r.code for r in rules],
        form=form or _replay_defaults(datetime.now(UTC).date()),
        errors=errors or {},
    )


@get("/replay", name="console-replay")
async def replay_form(request: Request[Any, Any, Any]) -> Template:
    return await _replay_form(request)


def _draft_in(rule: s.EarningRuleView) -> s.EarningRuleIn:
    fields = {k: getattr(rule, k) for k in s.EarningRuleIn.__struct_fields__}
    return msgspec.convert(msgspec.to_builtins(fields), s.EarningRuleIn)


@post("/replay", name="console-replay-start", opt=needs("rules"))
async def replay_start(request: Request[Any, Any, Any]) -> Response[Any]:
    """The chosen rules (in force or drafts) as the draft set, over whole days [since, until]."""
    form = await request.form()
    chosen = [v for v in form.getall("rule") if isinstance(v, str)] if "rule" in form else []
    values = await form_data(request)
    who = current(request).principal()
    try:
        since = _day("since", values.get("since", ""))
        until = _day("until", values.get("until", ""))
        top = _top(values.get("top", ""))
        async with transaction(request) as conn:
            by_code = {r.code: r for r in await activity.list_rules(conn, who)}
            drafts = [_draft_in(by_code[c]) for c in chosen if c in by_code]
            req = replay.ReplayIn(
                rules=drafts,
                since=datetime.combine(since, time(), UTC),
                until=datetime.combine(until + timedelta(days=1), time(), UTC),
                top=top,
            )
            job_id = await replay_tasks.start(conn, request.app.state.redis, who, req)
    except DomainError as exc:
        errors = errors_of(exc)
        if "until" in errors and "after since" in errors["until"]:
            errors["until"] = "must not be before since"
        return await _replay_form(request, form=values, chosen=chosen, errors=placed(errors, ("since", "until", "top")),
                                  status_code=400)  # fmt: skip
    return see_other(request, f"/console/replay/{job_id}")


def _top(value: str) -> int:
    top = _int_or_text(value or "10")
    if not isinstance(top, int) or not 1 <= top <= 100:
        raise InvalidInput("top", "must be a whole number from 1 to 100")
    return top


def replay_charts(result: dict[str, Any]) -> dict[str, Any]:
    """The result's chart options: per day, draft beside actual, in points and in money."""
    days = [d["day"] for d in result["days"]]
    points = {
        "tooltip": {"trigger": "axis"},
        "legend": {},
        "xAxis": {"type": "category", "data": days},
        "yAxis": {"type": "value", "name": "points"},
        "series": [
            {"name": "Draft", "type": "bar", "data": [d["draft_points"] for d in result["days"]]},
            {"name": "In force", "type": "bar", "data": [d["actual_points"] for d in result["days"]]},
        ],
    }
    cost = {
        "tooltip": {"trigger": "axis"},
        "legend": {},
        "xAxis": {"type": "category", "data": days},
        "yAxis": {"type": "value", "name": "money"},
        "series": [
            {
                "name": "Draft",
                "type": "line",
                "data": [d["draft_micros"] / 1_000_000 for d in result["days"]],
            },
            {
                "name": "In force",
                "type": "line",
                "data": [d["actual_micros"] / 1_000_000 for d in result["days"]],
            },
        ],
    }
    by_rule = {
        "tooltip": {"trigger": "axis"},
        "legend": {},
        "xAxis": {"type": "category", "data": [r["code"] for r in result["rules"]]},
        "yAxis": {"type": "value", "name": "points"},
        "series": [
            {"name": "Draft", "type": "bar", "data": [r["draft_points"] for r in result["rules"]]},
            {"name": "In force", "type": "bar", "data": [r["actual_points"] for r in result["rules"]]},
        ],
    }
    return {"points": points, "cost": cost, "by_rule": by_rule}


async def _replay_view(request: Request[Any, Any, Any], job_id: FromPath[str]) -> replay_tasks.ReplayView:
    async with reading(request) as conn:
        return await replay_tasks.status(conn, current(request).principal(), job_id)


@get("/replay/{job_id:str}", name="console-replay-show")
async def replay_show(request: Request[Any, Any, Any], job_id: FromPath[str]) -> Response[Any]:
    """The replay's progress (polled by htmx until it is done), then its result."""
    view = await _replay_view(request, job_id)
    context: dict[str, Any] = {
        "job": view,
        "charts": replay_charts(view.result) if view.result else None,
        "money": money,
    }
    if is_htmx(request):
        if view.status in ("succeeded", "failed"):
            # Over: the whole page again, so that its charts are drawn (htmx drops the JSON
            # script blocks the charts are read from when it swaps a fragment in).
            return Response(content=b"", status_code=200, headers={"HX-Refresh": "true"})
        return render(request, "rules/replay_status.html", **context)
    return render(request, "rules/replay_job.html", **context)


ROUTES = [
    rules_list,
    rule_new,
    rule_create,
    rule_show,
    rule_update,
    rule_activate,
    rule_deactivate,
    rule_simulate,
    replay_form,
    replay_start,
    replay_show,
]
NAV = [NavEntry("Earning rules", "/console/rules", order=40)]

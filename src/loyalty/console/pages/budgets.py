"""Budgets: the list with cap, issued, remaining and cost; create, top up, move, close; a burn
chart per budget.

The writes call the ledger service functions that the API's budget routes call
(ledger/routes.py BudgetController), with the operator as the actor; each form carries an
idempotency key of its own, so a form sent twice (a double click, a resent request) changes
the budget once. Figures of the list and of a budget's page are the ledger's own, read live;
the burn chart reads the report rollups (loyalty.reports.service.budget_burn), seconds behind.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from loyalty.console import figures
from loyalty.console.pages.dashboard import local_today
from loyalty.console.web import (
    NavEntry,
    current,
    errors_of,
    form_data,
    needs,
    parse,
    reading,
    render,
    see_other,
    transaction,
)
from loyalty.errors import Conflict, DomainError, InvalidInput, NotFound, Unprocessable
from loyalty.ledger import schemas as ls
from loyalty.ledger import service as ledger
from loyalty.programmes import repository as programmes
from loyalty.reports import service as reports

PAGE_SIZE = 25
BASE = "/console/budgets"
# A domain refusal, by its code, next to the field it is about.
_CODE_FIELDS = {
    "budget_exists": "code",
    "budget_exhausted": "move_points",
    "same_budget": "move_to",
    "budget_not_found": "move_to",
}
_KEY_REUSED = "This form was already sent. Reload the page to make another change."
_DONE = {
    "created": "Budget created.",
    "topped-up": "Budget topped up.",
    "moved": "Points moved.",
    "closed": "Budget closed: what it had not issued went back to funding.",
}


def _key(values: dict[str, str]) -> str | None:
    """The form's idempotency key (a fresh one is put in every form rendered)."""
    key = values.get("_key", "").strip()
    return key[:100] if key else None


def _status(exc: DomainError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, Unprocessable):
        return 422
    return 400


def _human(message: str) -> str:
    """msgspec's wording, as an operator would read it."""
    found = re.match(r"Expected `int` >= (-?\d+)", message)
    if found:
        return f"must be at least {found.group(1)}"
    found = re.match(r"Expected `int` <= (-?\d+)", message)
    if found:
        return f"must be at most {int(found.group(1)):,}"
    if message.startswith("Expected `int`"):
        return "must be a whole number"
    if "matching regex" in message:
        return "use lowercase letters, digits, '-' and '_', starting with a letter or digit"
    if message.startswith("Expected `str` of length <="):
        return "is too long"
    if message.startswith("Expected `str` of length >="):
        return "must not be empty"
    if message.startswith("Object missing required field"):
        return "is required"
    return message


def _errors(exc: DomainError, fields: dict[str, str]) -> dict[str, str]:
    """The refusal as {form field: message}: schema fields renamed to the form's names."""
    if exc.code == "idempotency_key_reused":
        return {"_form": _KEY_REUSED}
    if exc.code in _CODE_FIELDS and _CODE_FIELDS[exc.code] in fields.values():
        return {_CODE_FIELDS[exc.code]: exc.detail}
    found: dict[str, str] = {}
    for field, reason in errors_of(exc).items():
        if field == "_form" and "missing required field" in reason:
            missing = re.search(r"field `(\w+)`", reason)
            if missing and missing.group(1) in fields:
                found[fields[missing.group(1)]] = "is required"
                continue
        found[fields.get(field, field if field in fields.values() else "_form")] = _human(reason)
    return found


def _local(value: datetime | None, timezone: str) -> str:
    return value.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M") if value else ""


def _datetime(values: dict[str, str], field: str, timezone: str) -> datetime | None:
    """A datetime-local input, in the programme's time zone."""
    raw = values.get(field, "").strip()
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw).replace(tzinfo=ZoneInfo(timezone))
    except ValueError:
        raise InvalidInput(field, "must be a date and time") from None


def _unit_cost_micros(raw: str) -> int | None:
    """Money per point, as typed ('0.01'), in micros; at most six decimals."""
    raw = raw.strip().replace(",", ".")
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise InvalidInput("unit_cost", "must be an amount, e.g. 0.01") from None
    micros = value.scaleb(6)
    if not value.is_finite() or micros != micros.to_integral_value():
        raise InvalidInput("unit_cost", "may have at most six decimals")
    if micros < 0:
        raise InvalidInput("unit_cost", "must not be negative")
    return int(micros)


def _thresholds(raw: str) -> list[int]:
    parts = [p.strip() for p in raw.replace(";", ",").split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        raise InvalidInput("alert_thresholds", "whole percentages separated by commas, e.g. 50, 80, 100")
    return [int(p) for p in parts]


_CREATE_FIELDS = {
    "code": "code",
    "name": "name",
    "cap": "cap",
    "unit_cost_micros": "unit_cost",
    "starts_at": "starts_at",
    "ends_at": "ends_at",
    "per_member_cap": "per_member_cap",
    "alert_thresholds": "alert_thresholds",
}
_TOPUP_FIELDS = {"points": "topup_points", "reason": "topup_reason"}
_MOVE_FIELDS = {"to_budget": "move_to", "points": "move_points", "reason": "move_reason"}


def _create_request(values: dict[str, str], timezone: str) -> ls.BudgetCreate:
    body: dict[str, Any] = {
        "code": values.get("code", "").strip(),
        "name": values.get("name", "").strip(),
        "cap": values.get("cap", "").strip(),
        "per_member_cap": values.get("per_member_cap", "").strip(),
        "alert_thresholds": _thresholds(values.get("alert_thresholds", "")),
    }
    micros = _unit_cost_micros(values.get("unit_cost", ""))
    if micros is not None:
        body["unit_cost_micros"] = micros
    for field in ("starts_at", "ends_at"):
        when = _datetime(values, field, timezone)
        if when is not None:
            body[field] = when
    for required, label in (("code", "code"), ("cap", "cap")):
        if not body[required]:
            raise InvalidInput(label, "is required")
    if micros is None:
        raise InvalidInput("unit_cost", "is required")
    return parse(body, ls.BudgetCreate)


# Pages ----------------------------------------------------------------------------------


def _new_form() -> dict[str, str]:
    return {"unit_cost": "0.01", "alert_thresholds": "80, 100"}


async def _list_page(
    request: Request[Any, Any, Any],
    *,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
) -> Template:
    session = current(request)
    q = request.query_params
    query = (q.get("q") or "").strip()
    status = q.get("status") or "all"
    try:
        page = max(1, int(q.get("page") or 1))
    except ValueError:
        page = 1
    async with reading(request) as conn:
        budgets = await ledger.list_budgets(conn, session.principal())
        # The currency, as the API's liability route reads it.
        currency = str((await programmes.by_id(conn, session.programme_id))["currency"])
    # A programme has tens of budgets, not thousands: one read of them all, filtered here.
    needle = query.lower()
    found = [
        b
        for b in budgets
        if (status == "all" or b.status == status)
        and (not needle or needle in b.code.lower() or needle in b.name.lower())
    ]
    start = (page - 1) * PAGE_SIZE
    shown = found[start : start + PAGE_SIZE]

    def href(n: int) -> str:
        return f"{BASE}?{urlencode({'q': query, 'status': status, 'page': n})}"

    return render(
        request,
        "budgets/list.html",
        status_code=status_code,
        budgets=shown,
        total=len(budgets),
        matched=len(found),
        query=query,
        status=status,
        next_href=href(page + 1) if start + PAGE_SIZE < len(found) else None,
        prev_href=href(page - 1) if page > 1 else None,
        currency=currency,
        money=lambda micros: figures.money(micros, currency),
        unit_cost=lambda micros: figures.unit_cost(micros, currency),
        percent=figures.percent,
        local=lambda value: _local(value, session.timezone),
        errors=errors or {},
        values=values or _new_form(),
        form_key=uuid.uuid4().hex,
        done=_DONE.get(q.get("done") or ""),
    )


async def _detail_page(
    request: Request[Any, Any, Any],
    code: str,
    *,
    status_code: int = 200,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    failed: str = "",
) -> Template:
    session = current(request)
    today = local_today(session.timezone)
    period = {k: request.query_params.get(k, "") for k in ("days", "since", "until")}
    period_errors: dict[str, str] = {}
    try:
        since, until, preset = figures.chosen_period(period, today)
    except InvalidInput as exc:
        period_errors = errors_of(exc)
        since, until, preset = figures.chosen_period({}, today)
    async with reading(request) as conn:
        budget = await ledger.get_budget(conn, session.principal(), code)
        others = [
            b.code
            for b in await ledger.list_budgets(conn, session.principal())
            if b.code != code and b.status == "active"
        ]
        burns = await reports.budget_burn(conn, session.programme_id, since, until)
    burn = next((b for b in burns.budgets if b.code == code), None)
    currency = burns.currency
    option = figures.burn_option(burns.days, burn) if burn else None
    return render(
        request,
        "budgets/detail.html",
        status_code=status_code if not period_errors else max(status_code, 400),
        budget=budget,
        burn=burn,
        burns=burns,
        burn_option=option,
        others=others,
        currency=currency,
        money=lambda micros: figures.money(micros, currency),
        unit_cost=lambda micros: figures.unit_cost(micros, currency),
        percent=figures.percent,
        local=lambda value: _local(value, session.timezone),
        errors={**period_errors, **(errors or {})},
        values=values or {},
        failed=failed,
        form_key=uuid.uuid4().hex,
        period=period,
        preset=preset,
        since=since,
        until=until,
        done=_DONE.get(request.query_params.get("done") or ""),
    )


@get("/budgets", name="console-budgets")
async def budgets_list(request: Request[Any, Any, Any]) -> Template:
    return await _list_page(request)


@get("/budgets/{code:str}", name="console-budget")
async def budget_detail(request: Request[Any, Any, Any], code: FromPath[str]) -> Template:
    return await _detail_page(request, code)


# Writes ---------------------------------------------------------------------------------


@post("/budgets", opt=needs("budgets"), name="console-budget-create")
async def budget_create(request: Request[Any, Any, Any]) -> Response[Any]:
    session = current(request)
    values = await form_data(request)
    try:
        body = _create_request(values, session.timezone)
        async with transaction(request) as conn:
            await ledger.create_budget(conn, session.principal(), body, _key(values))
    except DomainError as exc:
        return await _list_page(
            request, status_code=_status(exc), errors=_errors(exc, _CREATE_FIELDS), values=values
        )
    return see_other(request, f"{BASE}/{body.code}?done=created")


@post("/budgets/{code:str}/top-up", opt=needs("budgets"), name="console-budget-top-up")
async def budget_top_up(request: Request[Any, Any, Any], code: FromPath[str]) -> Response[Any]:
    session = current(request)
    values = await form_data(request)
    try:
        body = parse(
            {"points": values.get("topup_points", ""), "reason": values.get("topup_reason", "").strip()},
            ls.BudgetTopUp,
        )
        async with transaction(request) as conn:
            await ledger.top_up_budget(conn, session.principal(), code, body, _key(values))
    except DomainError as exc:
        return await _detail_page(
            request, code, status_code=_status(exc), errors=_errors(exc, _TOPUP_FIELDS), values=values,
            failed="topup",
        )  # fmt: skip
    return see_other(request, f"{BASE}/{code}?done=topped-up")


@post("/budgets/{code:str}/move", opt=needs("budgets"), name="console-budget-move")
async def budget_move(request: Request[Any, Any, Any], code: FromPath[str]) -> Response[Any]:
    session = current(request)
    values = await form_data(request)
    try:
        body = parse(
            {
                "from_budget": code,
                "to_budget": values.get("move_to", ""),
                "points": values.get("move_points", ""),
                "reason": values.get("move_reason", "").strip(),
            },
            ls.BudgetMove,
        )
        async with transaction(request) as conn:
            await ledger.move_budget(conn, session.principal(), body, _key(values))
    except DomainError as exc:
        return await _detail_page(
            request, code, status_code=_status(exc), errors=_errors(exc, _MOVE_FIELDS), values=values,
            failed="move",
        )  # fmt: skip
    return see_other(request, f"{BASE}/{code}?done=moved")


@post("/budgets/{code:str}/close", opt=needs("budgets"), name="console-budget-close")
async def budget_close(request: Request[Any, Any, Any], code: FromPath[str]) -> Response[Any]:
    session = current(request)
    values = await form_data(request)
    try:
        async with transaction(request) as conn:
            await ledger.close_budget(conn, session.principal(), code, _key(values))
    except DomainError as exc:
        return await _detail_page(
            request, code, status_code=_status(exc), errors=_errors(exc, {}), failed="close"
        )
    return see_other(request, f"{BASE}/{code}?done=closed")


ROUTES = [budgets_list, budget_detail, budget_create, budget_top_up, budget_move, budget_close]
NAV = [NavEntry("Budgets", BASE, order=20)]

"""The audit log: every change, by whom, when, before → after, and why; filtered, paged,
exported."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from litestar import Request, get
from litestar.response import Response, Stream

from loyalty.audit import core, service
from loyalty.console import repository as operators
from loyalty.console.service import ConsoleSession
from loyalty.console.web import NavEntry, current, needs, reading, render
from loyalty.errors import InvalidInput

PAGE = 50
_FIELDS = ("actor", "action", "entity", "entity_id", "since", "until")


def _day(values: Mapping[str, str], field: str) -> date | None:
    raw = (values.get(field) or "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise InvalidInput(field, "must be a date, YYYY-MM-DD") from None


async def _filters(conn: Any, session: ConsoleSession, values: Mapping[str, str]) -> core.Filter:
    """The form's filters: days in the programme's time zone (until included); an actor given
    as an operator's email means that operator."""
    zone = ZoneInfo(session.timezone)
    since, until = _day(values, "since"), _day(values, "until")
    if since and until and until < since:
        raise InvalidInput("until", "must not be before since")
    actor = (values.get("actor") or "").strip() or None
    if actor and "@" in actor:
        operator_id = await operators.operator_id_by_email(conn, actor.lower())
        if operator_id is None:
            raise InvalidInput("actor", "no operator has this email")
        actor = f"operator:{operator_id}"
    return core.Filter(
        actor=actor,
        action=(values.get("action") or "").strip() or None,
        entity=(values.get("entity") or "").strip() or None,
        entity_id=(values.get("entity_id") or "").strip() or None,
        since=datetime.combine(since, time(), zone) if since else None,
        until=datetime.combine(until + timedelta(days=1), time(), zone) if until else None,
    ).check()


def _query(values: Mapping[str, str], **more: str) -> str:
    kept = {k: values[k] for k in _FIELDS if values.get(k)}
    kept.update(more)
    return urlencode(kept)


@get("/audit", name="console-audit")
async def audit_log(request: Request[Any, Any, Any]) -> Response[Any]:
    session = current(request)
    values = {k: v for k, v in request.query_params.items() if isinstance(v, str)}
    errors: dict[str, str] = {}
    page = None
    names: dict[int, str] = {}
    async with reading(request) as conn:
        try:
            filters = await _filters(conn, session, values)
            page = await service.list_entries(
                conn, session.programme_id, filters, cursor=values.get("cursor") or None, limit=PAGE
            )
        except InvalidInput as exc:
            errors[exc.field if exc.field in _FIELDS else "_form"] = exc.reason
        if page is not None:
            names = await operators.emails_by_id(conn, {e.operator_id for e in page.items if e.operator_id})
    next_href = (
        f"/console/audit?{_query(values, cursor=page.next_cursor)}" if page and page.next_cursor else None
    )
    return render(
        request,
        "audit/list.html",
        status_code=400 if errors else 200,
        values=values,
        errors=errors,
        entries=page.items if page else [],
        operator_emails=names,
        next_href=next_href,
        first_href=f"/console/audit?{_query(values)}" if values.get("cursor") else None,
        export_href=f"/console/audit.csv?{_query(values)}",
        actions=[
            ("", "any action"),
            *((s, s) for s in core.subjects()),
            *((a, a) for a in sorted(core.ACTIONS)),
        ],
    )


@get("/audit.csv", name="console-audit-csv", opt=needs("export"))
async def audit_csv(request: Request[Any, Any, Any]) -> Response[Any]:
    session = current(request)
    values = {k: v for k, v in request.query_params.items() if isinstance(v, str)}
    async with reading(request) as conn:
        filters = await _filters(conn, session, values)  # a bad filter is a 400 page, not a broken file
    stamp = datetime.now(ZoneInfo(session.timezone)).strftime("%Y%m%d-%H%M")
    return Stream(
        service.export_csv(request.app.state.engine, session.programme_id, filters),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="audit-{session.programme_code}-{stamp}.csv"'},
    )


ROUTES = [audit_log, audit_csv]
NAV = [NavEntry("Audit log", "/console/audit", order=95)]

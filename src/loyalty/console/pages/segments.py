"""Segments: the list, a builder with a live count, the members of a segment, a CSV export.
Saving, editing and deleting need ``segments``; the export needs ``export``."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Stream, Template

from loyalty import rules
from loyalty.console.segment_form import FACTS, OPERATORS, blank_rows, posted_rows, rows_of, rule_of
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
from loyalty.errors import Conflict, DomainError, InvalidInput, NotFound
from loyalty.segments import schemas as s
from loyalty.segments import service

PAGE = 50
LIST_PAGE = 50
# Codes the console's own addresses take (/console/segments/new ...).
RESERVED = frozenset({"new", "preview"})


class _Texts(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(max_length=200)] = ""
    description: Annotated[str, msgspec.Meta(max_length=2000)] = ""


@get("/segments", name="console-segments")
async def index(
    request: Request[Any, Any, Any], q: FromQuery[str | None] = None, page: FromQuery[int] = 1
) -> Template:
    who = current(request).principal()
    async with reading(request) as conn:
        items = (await service.list_all(conn, who)).items
    wanted = (q or "").strip().lower()
    if wanted:
        items = [i for i in items if wanted in i.code.lower() or wanted in i.name.lower()]
    page = max(page, 1)
    shown = items[(page - 1) * LIST_PAGE : page * LIST_PAGE]
    base = f"/console/segments?q={quote(q or '')}"
    return render(
        request,
        "segments/list.html",
        segments=shown,
        q=q or "",
        next_href=f"{base}&page={page + 1}" if len(items) > page * LIST_PAGE else None,
        prev_href=f"{base}&page={page - 1}" if page > 1 else None,
    )


def _builder(
    request: Request[Any, Any, Any],
    *,
    segment: s.SegmentView | None,
    values: dict[str, str],
    rows: list[dict[str, str]],
    count: int | None,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Template:
    return render(
        request,
        "segments/builder.html",
        status_code=status_code,
        segment=segment,
        values=values,
        rows=rows,
        count=count,
        facts=FACTS,
        operators=OPERATORS,
        errors=errors or {},
    )


@get("/segments/new", opt=needs("segments"))
async def new(request: Request[Any, Any, Any]) -> Template:
    return _builder(request, segment=None, values={"match": "all"}, rows=blank_rows(0), count=None)


@get("/segments/preview")
async def preview(request: Request[Any, Any, Any]) -> Template:
    """The builder's live count (htmx): how many members the rule as typed selects. Writes nothing."""
    values = {k: v for k, v in request.query_params.items() if k != "_csrf"}
    who = current(request).principal()
    try:
        rule = rule_of(values)
        async with reading(request) as conn:
            count = await service.count_rule(conn, who, rule)
    except DomainError as exc:
        return render(request, "segments/_count.html", count=None, errors=errors_of(exc))
    return render(request, "segments/_count.html", count=count, errors={})


async def _save(request: Request[Any, Any, Any], code: str | None) -> Response[Any]:
    values = await form_data(request)
    who = current(request).principal()
    segment = None
    try:
        if code is None and values.get("code", "").strip() in RESERVED:
            raise InvalidInput("code", "is a word the console uses in its addresses; choose another")
        rule = rule_of(values)
        async with transaction(request) as conn:
            if code is None:
                body = {k: values.get(k, "") for k in ("code", "name", "description")}
                created = await service.create(conn, who, parse({**body, "rule": rule}, s.SegmentCreate))
                code_saved = created.code
            else:
                body = {"name": values.get("name", ""), "description": values.get("description", "")}
                # Empty strings are kept: clearing a name or description is a change.
                texts = parse(body, _Texts)
                update = s.SegmentUpdate(rule=rule, name=texts.name, description=texts.description)
                code_saved = (await service.update(conn, who, code, update)).code
    except DomainError as exc:
        if isinstance(exc, NotFound):
            raise
        errors = errors_of(exc)
        if isinstance(exc, Conflict) and exc.code == "segment_exists":
            errors = {"code": exc.detail}
        if code is not None:
            async with reading(request) as conn:
                segment = await service.get(conn, who, code)
        return _builder(
            request,
            segment=segment,
            values=values,
            rows=posted_rows(values),
            count=None,
            errors=errors,
            status_code=409 if isinstance(exc, Conflict) else 400,
        )
    return see_other(request, f"/console/segments/{quote(code_saved)}?saved=1")


@post("/segments", opt=needs("segments"))
async def create(request: Request[Any, Any, Any]) -> Response[Any]:
    return await _save(request, None)


@get("/segments/{code:str}")
async def show(
    request: Request[Any, Any, Any], code: FromPath[str], after: FromQuery[str | None] = None
) -> Template:
    who = current(request).principal()
    async with reading(request) as conn:
        segment = await service.get(conn, who, code)
        count = (await service.count(conn, who, code)).count
        page = await service.members_page(conn, who, code, after or None, PAGE)
    base = f"/console/segments/{quote(code)}"
    return render(
        request,
        "segments/show.html",
        segment=segment,
        count=count,
        members=page.items,
        next_href=f"{base}?after={quote(page.next_cursor)}" if page.next_cursor else None,
        first_href=base if after else None,
    )


@get("/segments/{code:str}/edit", opt=needs("segments"))
async def edit(request: Request[Any, Any, Any], code: FromPath[str]) -> Template:
    who = current(request).principal()
    async with reading(request) as conn:
        segment = await service.get(conn, who, code)
        count = (await service.count(conn, who, code)).count
    match, rows, rule_json = rows_of(segment.rule)
    values = {
        "name": segment.name,
        "description": segment.description,
        "match": match,
        "rule_json": rule_json,
    }
    return _builder(request, segment=segment, values=values, rows=rows, count=count)


@post("/segments/{code:str}/edit", opt=needs("segments"))
async def save(request: Request[Any, Any, Any], code: FromPath[str]) -> Response[Any]:
    return await _save(request, code)


@post("/segments/{code:str}/delete", opt=needs("segments"))
async def remove(request: Request[Any, Any, Any], code: FromPath[str]) -> Response[Any]:
    who = current(request).principal()
    async with transaction(request) as conn:
        await service.delete(conn, who, code)
    return see_other(request, "/console/segments?deleted=1")


@get("/segments/{code:str}/export.csv", opt=needs("export"))
async def export(request: Request[Any, Any, Any], code: FromPath[str]) -> Stream:
    """Every member of the segment as CSV, streamed from one snapshot however large it is."""
    who = current(request).principal()
    async with reading(request) as conn:
        rule = await service.segment_rule(conn, who, code)
    return Stream(
        _csv(request, who, rule),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="segment-{code}.csv"'},
    )


async def _csv(request: Request[Any, Any, Any], who: Any, rule: rules.Rule) -> AsyncIterator[bytes]:
    yield b"member_id\r\n"
    async for ids in service.stream_member_ids(request.app.state.engine, who, rule):
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerows([member_id] for member_id in ids)
        yield out.getvalue().encode()


ROUTES = [index, new, preview, create, show, edit, save, remove, export]
NAV = [NavEntry("Segments", "/console/segments", order=50)]

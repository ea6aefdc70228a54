"""The tier ladder: versions, the draft editor, the backtest, publishing, and any member's tier
explained. Writes need ``rules``; reading, backtests and explanations are for every role."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from litestar import Request, Response, get, post
from litestar.background_tasks import BackgroundTask
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from loyalty.benefits import service as benefits
from loyalty.console.ladder_form import blank_row, form_rows, ladder_of, place_errors, rows_of
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
    utc_moment,
)
from loyalty.errors import DomainError, NotFound
from loyalty.tiers import schemas as s
from loyalty.tiers import service, tasks

PAGE = 50
# The draft a programme without a ladder starts from: the base tier everyone holds.
STARTER = {"tiers": [{"code": "base", "name": "Member", "rank": 0}]}


@get("/tiers", name="console-tiers")
async def versions(request: Request[Any, Any, Any]) -> Template:
    who = current(request).principal()
    async with reading(request) as conn:
        listed = await service.list_versions(conn, who)
    items = list(reversed(listed.items))  # newest first
    in_force = next((v for v in items if v.status == "published"), None)
    return render(request, "tiers/versions.html", versions=items, in_force=in_force)


@post("/tiers/drafts", opt=needs("rules"))
async def new_draft(request: Request[Any, Any, Any]) -> Response[Any]:
    """A draft copied from the ladder in force (else the newest version, else a base tier)."""
    who = current(request).principal()
    async with transaction(request) as conn:
        listed = (await service.list_versions(conn, who)).items
        source = next((v for v in reversed(listed) if v.status == "published"), None) or (
            listed[-1] if listed else None
        )
        definition = {"tiers": source.tiers} if source else STARTER
        note = f"from version {source.version}" if source else "first ladder"
        body = parse({"tiers": definition["tiers"], "note": note}, s.LadderCreate)
        created = await service.create_version(conn, who, body)
    return see_other(request, f"/console/tiers/{created.version}/edit")


async def _version(request: Request[Any, Any, Any], version: FromPath[int]) -> s.VersionView:
    async with reading(request) as conn:
        return await service.get_version(conn, current(request).principal(), version)


@get("/tiers/{version:int}")
async def show(request: Request[Any, Any, Any], version: FromPath[int]) -> Template:
    who = current(request).principal()
    async with reading(request) as conn:
        view = await service.get_version(conn, who, version)
        perks = (await benefits.list_tier_benefits(conn, who)).items
    by_tier: dict[str, list[Any]] = {}
    for perk in perks:
        by_tier.setdefault(perk.tier, []).append(perk)
    tiers = sorted(view.tiers, key=lambda t: t.get("rank", 0))
    return render(request, "tiers/version.html", version=view, tiers=tiers, perks=by_tier)


def _editor(
    request: Request[Any, Any, Any],
    view: s.VersionView,
    rows: list[dict[str, str]],
    note: str,
    *,
    errors: dict[str, str] | None = None,
    status_code: int = 200,
) -> Template:
    return render(
        request,
        "tiers/edit.html",
        status_code=status_code,
        version=view,
        rows=rows,
        note=note,
        errors=errors or {},
    )


@get("/tiers/{version:int}/edit", opt=needs("rules"))
async def edit(request: Request[Any, Any, Any], version: FromPath[int]) -> Template:
    view = await _version(request, version)
    rows = rows_of({"tiers": view.tiers})
    top = max((int(r["rank"] or 0) for r in rows), default=-1)
    return _editor(request, view, [*rows, blank_row(top + 1)], view.note)


@post("/tiers/{version:int}/edit", opt=needs("rules"))
async def save(request: Request[Any, Any, Any], version: FromPath[int]) -> Response[Any]:
    values = await form_data(request)
    who = current(request).principal()
    body: dict[str, Any] = {}
    origin: list[int] = []
    try:
        body, origin = ladder_of(values)
        ladder = parse(body, s.LadderCreate)
        async with transaction(request) as conn:
            await service.update_draft(conn, who, version, ladder)
    except DomainError as exc:
        if isinstance(exc, NotFound):
            raise
        view = await _version(request, version)
        errors = errors_of(exc)
        if body:
            errors = place_errors(errors, body, origin)
        status = 409 if exc.code == "tier_version_not_draft" else 400
        return _editor(
            request, view, form_rows(values), values.get("note", ""), errors=errors, status_code=status
        )
    return see_other(request, f"/console/tiers/{version}?saved=1")


@get("/tiers/{version:int}/backtest")
async def backtest(
    request: Request[Any, Any, Any],
    version: FromPath[int],
    direction: FromQuery[str | None] = None,
    after: FromQuery[str | None] = None,
) -> Template:
    """Counts over every member, and a page of who moves (up, down or either)."""
    who = current(request).principal()
    moving: Literal["up", "down"] | None = direction if direction in ("up", "down") else None  # type: ignore[assignment]
    async with reading(request) as conn:
        view = await service.get_version(conn, who, version)
        counts = await service.backtest(conn, who, version)
        page = await service.backtest_movers(
            conn, who, version, direction=moving, after=after or None, limit=PAGE
        )
    ranks = {t["code"]: t.get("rank", 0) for t in view.tiers}
    base = f"/console/tiers/{version}/backtest?direction={moving or ''}"
    next_href = f"{base}&after={quote(page.next_cursor, safe='')}" if page.next_cursor else None
    return render(
        request,
        "tiers/backtest.html",
        version=view,
        counts=counts,
        movers=page.items,
        direction=moving or "",
        next_href=next_href,
        first_href=base if after else None,
        ranks=ranks,
    )


@get("/tiers/{version:int}/publish", opt=needs("rules"))
async def confirm_publish(request: Request[Any, Any, Any], version: FromPath[int]) -> Template:
    who = current(request).principal()
    async with reading(request) as conn:
        view = await service.get_version(conn, who, version)
        counts = await service.backtest(conn, who, version) if view.status == "draft" else None
    return render(
        request, "tiers/publish.html", version=view, counts=counts, errors={}, values={"reassess": "1"}
    )


@post("/tiers/{version:int}/publish", opt=needs("rules"))
async def publish(request: Request[Any, Any, Any], version: FromPath[int]) -> Response[Any]:
    values = await form_data(request)
    who = current(request).principal()
    try:
        effective_at = utc_moment("effective_at", values.get("effective_at", ""))
        reassess = values.get("reassess") == "1"
        async with transaction(request) as conn:
            view = await service.publish(
                conn, who, version, s.PublishRequest(effective_at=effective_at, reassess=reassess)
            )
    except DomainError as exc:
        if isinstance(exc, NotFound):
            raise
        view = await _version(request, version)
        status = 409 if exc.code == "tier_version_not_draft" else 400
        return render(
            request,
            "tiers/publish.html",
            status_code=status,
            version=view,
            counts=None,
            errors=errors_of(exc),
            values=values,
        )
    response = see_other(request, f"/console/tiers/{version}?published=1")
    if reassess:
        # As the API does: queued once the publish has committed, deferred to when it is in force.
        defer = view.effective_at if view.effective_at and view.effective_at > datetime.now(UTC) else None
        response.background = BackgroundTask(
            tasks.enqueue_reassess, request.app.state.redis, programme_id=who.programme_id, defer_until=defer
        )
    return response


@get("/tiers/explain")
async def explain(request: Request[Any, Any, Any], member_id: FromQuery[str | None] = None) -> Template:
    """A member's tier: what holds it, what the next one takes, and the history with its reasons."""
    who = current(request).principal()
    wanted = (member_id or "").strip()
    view = history = None
    error = ""
    if wanted:
        try:
            async with reading(request) as conn:
                view = await service.member_tier(conn, who, wanted)
                history = (await service.history(conn, who, wanted, 20)).items
        except NotFound as exc:
            error = exc.detail
    return render(
        request,
        "tiers/explain.html",
        status_code=404 if error else 200,
        member_id=wanted,
        view=view,
        history=history or [],
        errors={"member_id": error} if error else {},
    )


ROUTES = [versions, new_draft, show, edit, save, backtest, confirm_publish, publish, explain]
NAV = [NavEntry("Tiers", "/console/tiers", order=30)]

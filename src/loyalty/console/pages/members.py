"""Member 360: find a member by id or attribute, see everything about them in one page, and the
support actions (a manual adjustment with its confirm step, a tier pin, voiding a hold, revoking
a grant), each checked on the server against the operator's role."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from urllib.parse import quote, urlencode

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Template
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.activity import service as activity
from loyalty.benefits import schemas as benefit_schemas
from loyalty.benefits import service as benefits
from loyalty.console.web import (
    PREFIX,
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
from loyalty.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound, Unprocessable
from loyalty.http.principal import Principal
from loyalty.ledger import schemas as ledger_schemas
from loyalty.ledger import service as ledger
from loyalty.members import service as members
from loyalty.tiers import schemas as tier_schemas
from loyalty.tiers import service as tiers

PAGE_SIZE = 25
HISTORY_SIZE = 20
TIER_HISTORY_SIZE = 50
# The confirm step carries the idempotency key of the adjustment it shows: confirming twice
# (a double click, a reload) posts one adjustment.
_KEY = re.compile(r"^[0-9a-f]{32}$")

DONE = {
    "adjusted": "The adjustment was posted.",
    "pinned": "The tier pin was set.",
    "unpinned": "The tier pin was removed.",
    "voided": "The hold was voided: its points are available again.",
    "revoked": "The grant was revoked.",
}


def member_path(member_id: str, action: str = "") -> str:
    return f"{PREFIX}/members/{quote(member_id, safe='')}" + (f"/{action}" if action else "")


def _status(exc: DomainError) -> int:
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, Unprocessable):
        return 422
    if isinstance(exc, Forbidden):
        return 403
    return 400


# -- search -----------------------------------------------------------------------------------


@get("/members", name="console-members")
async def search(request: Request[Any, Any, Any]) -> Template:
    q = (request.query_params.get("q") or "").strip()
    by: Literal["id", "attribute"] = "attribute" if request.query_params.get("by") == "attribute" else "id"
    cursor = request.query_params.get("cursor") or None
    page = None
    errors: dict[str, str] = {}
    status = 200
    if q:
        try:
            async with reading(request) as conn:
                page = await members.search(
                    conn, current(request).principal(), query=q, by=by, cursor=cursor, limit=PAGE_SIZE
                )
        except InvalidInput as exc:
            errors, status = errors_of(exc), 400
    next_href = None
    if page is not None and page.next_cursor:
        next_href = f"{PREFIX}/members?" + urlencode({"q": q, "by": by, "cursor": page.next_cursor})
    first_href = f"{PREFIX}/members?" + urlencode({"q": q, "by": by}) if cursor else None
    return render(
        request,
        "members/search.html",
        status_code=status,
        q=q,
        by=by,
        page=page,
        errors=errors,
        next_href=next_href,
        first_href=first_href,
        member_path=member_path,
    )


# -- the 360 ----------------------------------------------------------------------------------


async def _ladder_tiers(conn: AsyncConnection, who: Principal, version: int) -> list[dict[str, Any]]:
    found = await tiers.get_version(conn, who, version)
    return sorted(found.tiers, key=lambda t: int(t.get("rank", 0)))


async def _member_context(
    conn: AsyncConnection, who: Principal, member_id: str, history_cursor: str | None
) -> dict[str, Any]:
    """Everything the 360 shows, read through the services behind the API's member routes."""
    member = await members.get(conn, who, member_id)
    tier: tier_schemas.MemberTierView | None = None
    tier_history: list[tier_schemas.HistoryItem] = []
    ladder: list[dict[str, Any]] = []
    try:
        tier = await tiers.member_tier(conn, who, member_id)
        ladder = await _ladder_tiers(conn, who, tier.ladder_version)
    except NotFound as exc:
        if exc.code != "no_tier_ladder":
            raise
    tier_history = (await tiers.history(conn, who, member_id, TIER_HISTORY_SIZE)).items
    history = await ledger.history(
        conn, who, member_id, cursor=history_cursor, limit=HISTORY_SIZE,
        kinds=None, reference=None, since=None, until=None,
    )  # fmt: skip
    entitlements = await benefits.entitlements(conn, who, member_id)
    return {
        "member": member,
        "balance": await ledger.balance(conn, who, member_id),
        "lots": await ledger.open_lots(conn, who, member_id),
        "holds": await ledger.open_holds(conn, who, member_id),
        "history": history,
        "history_next": member_path(member_id) + "?" + urlencode({"history": history.next_cursor})
        if history.next_cursor
        else None,
        "history_first": member_path(member_id) if history_cursor else None,
        "facts": await activity.member_facts(conn, who, member_id),
        "tier": tier,
        "ladder": ladder,
        "tier_history": tier_history,
        "entitlements": entitlements.items,
    }


async def _member_page(
    request: Request[Any, Any, Any],
    member_id: str,
    *,
    status_code: int = 200,
    errors: dict[str, dict[str, str]] | None = None,
    values: dict[str, str] | None = None,
) -> Template:
    """The 360, with the errors of a refused action next to its fields (``errors[form]``)."""
    async with reading(request) as conn:
        context = await _member_context(
            conn, current(request).principal(), member_id, request.query_params.get("history") or None
        )
    done = DONE.get(request.query_params.get("done") or "")
    return render(
        request,
        "members/detail.html",
        status_code=status_code,
        errors=errors or {},
        values=values or {},
        done=done,
        member_path=member_path,
        today=datetime.now(UTC).date(),
        **context,
    )


@get("/members/{member_id:str}", name="console-member")
async def member(request: Request[Any, Any, Any], member_id: FromPath[str]) -> Template:
    return await _member_page(request, member_id)


# -- manual adjustment, in two steps ------------------------------------------------------------


def _adjustment(member_id: str, values: dict[str, str]) -> ledger_schemas.AdjustRequest:
    """The form as an adjustment, or an InvalidInput listing every field that is wrong."""
    problems: list[dict[str, str]] = []
    raw_points = values.get("points", "").strip().replace(" ", "")
    points = 0
    try:
        points = int(raw_points.lstrip("+"))
        if points == 0:
            problems.append({"field": "points", "reason": "must not be zero: + credits, - debits"})
    except ValueError:
        problems.append({"field": "points", "reason": "a whole number of points, e.g. 500 or -200"})
    reason = values.get("reason", "").strip()
    if not reason:
        problems.append({"field": "reason", "reason": "is required: say why the balance changes"})
    expiry_days = values.get("expiry_days", "").strip()
    if expiry_days and points < 0:
        problems.append({"field": "expiry_days", "reason": "only a credit can expire; leave it empty"})
    if problems:
        refused = InvalidInput(problems[0]["field"], problems[0]["reason"])
        refused.extra["errors"] = problems  # every wrong field at once, each next to its input
        raise refused
    fields: dict[str, Any] = {"member_id": member_id, "points": points, "reason": reason}
    if expiry_days:
        fields["expiry"] = {"days": expiry_days}
    try:
        return parse(fields, ledger_schemas.AdjustRequest)
    except InvalidInput as exc:
        if exc.extra.get("field") == "expiry.days":
            raise InvalidInput("expiry_days", "between 1 and 3650 days") from None
        raise


def _expires_on(req: ledger_schemas.AdjustRequest, tz: str) -> datetime | None:
    if req.expiry is None:
        return None
    from loyalty.ledger import core as ledger_core

    return ledger_core.ExpiryPolicy(req.expiry.days, req.expiry.round_to).expires_at(datetime.now(UTC), tz)


@post("/members/{member_id:str}/adjust", opt=needs("member.adjust"), name="console-member-adjust")
async def adjust(request: Request[Any, Any, Any], member_id: FromPath[str]) -> Response[Any]:
    """Step one shows what will happen and writes nothing; only the confirmed post (with the key
    the first step issued) writes the adjustment."""
    values = await form_data(request)
    session = current(request)
    who = session.principal()
    try:
        req = _adjustment(member_id, values)
        if values.get("confirm") != "yes":
            async with reading(request) as conn:
                found = await members.get(conn, who, member_id)
                balance = await ledger.balance(conn, who, member_id)
            return render(
                request,
                "members/confirm_adjust.html",
                member=found,
                balance=balance,
                adjustment=req,
                after=balance.available + req.points,
                expires_at=_expires_on(req, session.timezone),
                expiry_days=values.get("expiry_days", "").strip(),
                key=uuid.uuid4().hex,
                member_path=member_path,
            )
        key = values.get("key", "")
        if not _KEY.match(key):
            raise InvalidInput("_form", "The confirmation expired; review the adjustment again.")
        async with transaction(request) as conn:
            await ledger.adjust(conn, who, req, f"console-adjust-{key}")
    except DomainError as exc:
        return await _member_page(
            request, member_id, status_code=_status(exc), errors={"adjust": errors_of(exc)}, values=values
        )
    return see_other(request, member_path(member_id) + "?done=adjusted")


# -- tier pin ---------------------------------------------------------------------------------


def _pin_until(raw: str) -> datetime | None:
    """A date from the form: the pin holds through that day (UTC)."""
    if not raw.strip():
        return None
    try:
        day = date.fromisoformat(raw.strip())
    except ValueError:
        raise InvalidInput("until", "a date, e.g. 2027-06-30") from None
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)


def _prefixed(exc: DomainError, prefix: str) -> dict[str, str]:
    return {(k if k == "_form" else f"{prefix}{k}"): v for k, v in errors_of(exc).items()}


@post("/members/{member_id:str}/tier-pin", opt=needs("member.tier_pin"), name="console-member-pin")
async def pin(request: Request[Any, Any, Any], member_id: FromPath[str]) -> Response[Any]:
    values = await form_data(request)
    try:
        reason = values.get("pin_reason", "").strip()
        if not reason:
            raise InvalidInput("reason", "is required: say why the tier is pinned")
        req = parse(
            {
                "kind": values.get("pin_kind", ""),
                "tier": values.get("pin_tier", ""),
                "reason": reason,
                "until": _pin_until(values.get("pin_until", "")),
            },
            tier_schemas.PinRequest,
        )
        async with transaction(request) as conn:
            await tiers.pin(conn, current(request).principal(), member_id, req)
    except DomainError as exc:
        return await _member_page(
            request,
            member_id,
            status_code=_status(exc),
            errors={"pin": _prefixed(exc, "pin_")},
            values=values,
        )
    return see_other(request, member_path(member_id) + "?done=pinned")


@post("/members/{member_id:str}/tier-unpin", opt=needs("member.tier_pin"), name="console-member-unpin")
async def unpin(request: Request[Any, Any, Any], member_id: FromPath[str]) -> Response[Any]:
    values = await form_data(request)
    try:
        reason = values.get("unpin_reason", "").strip()
        if not reason:
            raise InvalidInput("reason", "is required: say why the pin is removed")
        async with transaction(request) as conn:
            await tiers.unpin(
                conn, current(request).principal(), member_id, tier_schemas.UnpinRequest(reason=reason)
            )
    except DomainError as exc:
        return await _member_page(
            request,
            member_id,
            status_code=_status(exc),
            errors={"unpin": _prefixed(exc, "unpin_")},
            values=values,
        )
    return see_other(request, member_path(member_id) + "?done=unpinned")


# -- holds and grants -------------------------------------------------------------------------


@post(
    "/members/{member_id:str}/holds/{hold_id:int}/void",
    opt=needs("member.void_hold"),
    name="console-member-void",
)
async def void(
    request: Request[Any, Any, Any], member_id: FromPath[str], hold_id: FromPath[int]
) -> Response[Any]:
    who = current(request).principal()
    try:
        async with transaction(request) as conn:
            # Only this member's open holds are voided from their page.
            if hold_id not in {h.hold_id for h in await ledger.open_holds(conn, who, member_id)}:
                raise NotFound(
                    "This member has no open hold with this id.",
                    code="hold_not_found",
                    extra={"hold_id": hold_id},
                )
            await ledger.void(conn, who, hold_id, None)
    except DomainError as exc:
        return await _member_page(
            request, member_id, status_code=_status(exc), errors={f"void-{hold_id}": errors_of(exc)}
        )
    return see_other(request, member_path(member_id) + "?done=voided")


@post(
    "/members/{member_id:str}/grants/{grant_id:int}/revoke",
    opt=needs("member.revoke_grant"),
    name="console-member-revoke",
)
async def revoke(
    request: Request[Any, Any, Any], member_id: FromPath[str], grant_id: FromPath[int]
) -> Response[Any]:
    values = await form_data(request)
    try:
        reason = values.get("reason", "").strip()
        if not reason:
            raise InvalidInput("reason", "is required: say why the grant is revoked")
        async with transaction(request) as conn:
            await benefits.revoke(
                conn,
                current(request).principal(),
                member_id,
                grant_id,
                benefit_schemas.RevokeRequest(reason=reason),
            )
    except DomainError as exc:
        return await _member_page(
            request, member_id, status_code=_status(exc), errors={f"revoke-{grant_id}": errors_of(exc)}
        )
    return see_other(request, member_path(member_id) + "?done=revoked")


ROUTES = [search, member, adjust, pin, unpin, void, revoke]
NAV = [NavEntry("Members", f"{PREFIX}/members", order=10)]

"""Administration: the programme's API keys (a new key's secret is shown once), its operators
(roles, removal, invitations) and its settings.

Every role may read these pages; a change needs ``keys``, ``operators`` or ``settings``, which
only admins hold. The invitation page (``/console/invite/{token}``) is public: the token is the
proof, it works once and for seven days."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath
from litestar.response import Template

from loyalty.auth import core as auth_core
from loyalty.auth import service as keys
from loyalty.console import service as operators
from loyalty.console.core import CONSOLE_ROLES
from loyalty.console.web import (
    PREFIX,
    PUBLIC,
    NavEntry,
    current,
    errors_of,
    form_data,
    login_csrf,
    needs,
    now,
    parse,
    reading,
    render,
    see_other,
    transaction,
)
from loyalty.errors import Conflict, DomainError, InvalidInput, NotFound
from loyalty.programmes import repository as programmes
from loyalty.programmes import service as programme_service
from loyalty.programmes.schemas import ProgrammeUpdate

BASE = f"{PREFIX}/admin"
INVITE_CSRF_COOKIE = "loyalty_console_invite"


# -- API keys ----------------------------------------------------------------------------------


async def _keys_page(request: Request[Any, Any, Any], *, status_code: int = 200, **context: Any) -> Template:
    async with reading(request) as conn:
        found = await keys.list_api_keys(conn, current(request).programme_id)
    context.setdefault("errors", {})
    context.setdefault("values", {})
    return render(
        request,
        "admin/keys.html",
        status_code=status_code,
        keys=sorted(found, key=lambda k: (k["revoked_at"] is not None, -k["id"])),
        key_roles=auth_core.KEY_ROLES,
        tab="keys",
        **context,
    )


@get("/admin", name="console-admin")
async def admin_home(request: Request[Any, Any, Any]) -> Template:
    return await _keys_page(request)


@get("/admin/keys", name="console-admin-keys")
async def keys_page(request: Request[Any, Any, Any]) -> Template:
    return await _keys_page(request)


@post("/admin/keys", opt=needs("keys"), name="console-admin-keys-create")
async def create_key(request: Request[Any, Any, Any]) -> Template:
    values = await form_data(request)
    name = values.get("name", "").strip()
    try:
        if len(name) > 200:
            raise InvalidInput("name", "at most 200 characters")
        async with transaction(request) as conn:
            key_id, secret = await keys.create_api_key(
                conn,
                programme_id=current(request).programme_id,
                role=values.get("role", ""),
                name=name or None,
                who=current(request).principal(),
            )
    except DomainError as exc:
        return await _keys_page(request, status_code=400, errors=errors_of(exc), values=values)
    return await _keys_page(request, secret=secret, created_id=key_id)


@post("/admin/keys/{key_id:int}/revoke", opt=needs("keys"), name="console-admin-keys-revoke")
async def revoke_key(request: Request[Any, Any, Any], key_id: FromPath[int]) -> Response[Any]:
    async with transaction(request) as conn:
        await keys.revoke_api_key(
            conn, key_id=key_id, programme_id=current(request).programme_id, who=current(request).principal()
        )
    return see_other(request, f"{BASE}/keys")


# -- operators and invitations -----------------------------------------------------------------


async def _operators_page(
    request: Request[Any, Any, Any], *, status_code: int = 200, **context: Any
) -> Template:
    programme_id = current(request).programme_id
    async with reading(request) as conn:
        people = await operators.programme_operators(conn, programme_id)
        invitations = await operators.pending_invitations(conn, programme_id, now())
    context.setdefault("errors", {})
    context.setdefault("values", {})
    return render(
        request,
        "admin/operators.html",
        status_code=status_code,
        people=people,
        invitations=invitations,
        roles=CONSOLE_ROLES,
        tab="operators",
        **context,
    )


@get("/admin/operators", name="console-admin-operators")
async def operators_page(request: Request[Any, Any, Any]) -> Template:
    return await _operators_page(request)


@post("/admin/operators/{operator_id:int}/role", opt=needs("operators"), name="console-admin-role")
async def change_role(request: Request[Any, Any, Any], operator_id: FromPath[int]) -> Response[Any]:
    values = await form_data(request)
    try:
        async with transaction(request) as conn:
            await operators.change_role(
                conn,
                current(request).programme_id,
                operator_id,
                values.get("role", ""),
                who=current(request).principal(),
            )
    except DomainError as exc:
        return await _operators_page(request, status_code=_status(exc), row_errors={operator_id: exc.detail})
    return see_other(request, f"{BASE}/operators")


@post("/admin/operators/{operator_id:int}/remove", opt=needs("operators"), name="console-admin-remove")
async def remove_operator(request: Request[Any, Any, Any], operator_id: FromPath[int]) -> Response[Any]:
    try:
        async with transaction(request) as conn:
            await operators.remove_from_programme(
                conn, current(request).programme_id, operator_id, who=current(request).principal()
            )
    except DomainError as exc:
        return await _operators_page(request, status_code=_status(exc), row_errors={operator_id: exc.detail})
    return see_other(request, f"{BASE}/operators")


def _status(exc: DomainError) -> int:
    return 404 if isinstance(exc, NotFound) else 409 if isinstance(exc, Conflict) else 400


@post("/admin/invitations", opt=needs("operators"), name="console-admin-invite")
async def invite(request: Request[Any, Any, Any]) -> Template:
    values = await form_data(request)
    session = current(request)
    try:
        async with transaction(request) as conn:
            token = await operators.invite(
                conn,
                programme_id=session.programme_id,
                email=values.get("email", ""),
                role=values.get("role", ""),
                invited_by=session.operator_id,
                now=now(),
                who=session.principal(),
            )
    except DomainError as exc:
        return await _operators_page(request, status_code=_status(exc), errors=errors_of(exc), values=values)
    link = f"{str(request.base_url).rstrip('/')}{PREFIX}/invite/{token}"
    return await _operators_page(request, invite_link=link, invited=values.get("email", "").strip().lower())


@post("/admin/invitations/{invitation_id:int}/cancel", opt=needs("operators"), name="console-admin-uninvite")
async def cancel_invitation(request: Request[Any, Any, Any], invitation_id: FromPath[int]) -> Response[Any]:
    async with transaction(request) as conn:
        await operators.cancel_invitation(
            conn, current(request).programme_id, invitation_id, who=current(request).principal()
        )
    return see_other(request, f"{BASE}/operators")


# -- programme settings --------------------------------------------------------------------------


async def _settings_page(
    request: Request[Any, Any, Any], *, status_code: int = 200, **context: Any
) -> Template:
    async with reading(request) as conn:
        programme = await programmes.by_id(conn, current(request).programme_id)
    context.setdefault("errors", {})
    context.setdefault("values", programme)
    return render(
        request,
        "admin/settings.html",
        status_code=status_code,
        programme=programme,
        tab="settings",
        **context,
    )


@get("/admin/settings", name="console-admin-settings")
async def settings_page(request: Request[Any, Any, Any]) -> Template:
    return await _settings_page(request)


@post("/admin/settings", opt=needs("settings"), name="console-admin-settings-save")
async def save_settings(request: Request[Any, Any, Any]) -> Response[Any]:
    values = await form_data(request)
    values["allow_transfers"] = "true" if values.get("allow_transfers") == "on" else "false"
    try:
        data = parse(
            {k: values.get(k, "") for k in ("name", "timezone", "clawback_policy", "allow_transfers")},
            ProgrammeUpdate,
        )
        changes = {
            k: v
            for k, v in (
                ("name", data.name),
                ("timezone", data.timezone),
                ("clawback_policy", data.clawback_policy),
                ("allow_transfers", data.allow_transfers),
            )
            if v is not None
        }
        async with transaction(request) as conn:
            await programme_service.update_programme(
                conn, current(request).programme_id, changes, who=current(request).principal()
            )
    except DomainError as exc:
        shown = {**values, "allow_transfers": values["allow_transfers"] == "true"}
        return await _settings_page(request, status_code=400, errors=errors_of(exc), values=shown)
    return see_other(request, f"{BASE}/settings?saved=1")


# -- accepting an invitation (public: the token is the proof) -------------------------------------


def _invite_page(
    request: Request[Any, Any, Any],
    token: str,
    row: dict[str, Any] | None,
    *,
    status_code: int = 200,
    **context: Any,
) -> Response[Any]:
    csrf = request.cookies.get(INVITE_CSRF_COOKIE) or login_csrf()
    page = render(
        request,
        "admin/invite.html",
        status_code=status_code,
        invitation=row,
        token=token,
        invite_csrf=csrf,
        **context,
    )
    page.cookies.append(
        Cookie(
            key=INVITE_CSRF_COOKIE,
            value=csrf,
            path=f"{PREFIX}/invite",
            httponly=True,
            samesite="strict",
            secure=bool(request.app.state.settings.https),
        )
    )
    return page


@get("/invite/{token:str}", opt=PUBLIC, name="console-invite")
async def invitation_form(request: Request[Any, Any, Any], token: FromPath[str]) -> Response[Any]:
    try:
        async with reading(request) as conn:
            row = await operators.invitation(conn, token, now())
    except operators.InvitationInvalid as exc:
        return _invite_page(request, token, None, status_code=404, error=exc.detail)
    return _invite_page(request, token, row)


@post("/invite/{token:str}", opt=PUBLIC, name="console-invite-accept")
async def accept_invitation(request: Request[Any, Any, Any], token: FromPath[str]) -> Response[Any]:
    form = await request.form()
    sent = form.get("_csrf")
    values = await form_data(request)
    if not sent or sent != request.cookies.get(INVITE_CSRF_COOKIE):
        return _invite_page(
            request, token, None, status_code=403, error="This form has expired. Open the link again."
        )
    password = values.get("password", "")
    try:
        if "confirm" in values and values["confirm"] != password:
            raise InvalidInput("confirm", "does not match the password")
        async with transaction(request) as conn:
            email = await operators.accept_invitation(conn, token, password=password, now=now())
    except operators.InvitationInvalid as exc:
        return _invite_page(request, token, None, status_code=404, error=exc.detail)
    except DomainError as exc:
        async with reading(request) as conn:
            row = await operators.invitation(conn, token, now())
        return _invite_page(request, token, row, status_code=400, errors=errors_of(exc))
    page = render(request, "admin/invite.html", invitation=None, token=token, accepted=email)
    page.cookies.append(Cookie(key=INVITE_CSRF_COOKIE, value="", path=f"{PREFIX}/invite", max_age=0))
    return page


ROUTES = [
    admin_home,
    keys_page,
    create_key,
    revoke_key,
    operators_page,
    change_role,
    remove_operator,
    invite,
    cancel_invitation,
    settings_page,
    save_settings,
    invitation_form,
    accept_invitation,
]
# In the menu for admins only; the pages themselves stay readable by every role.
NAV = [NavEntry("Administration", BASE, permission="keys", order=90)]

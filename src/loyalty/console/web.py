"""What every console page shares: the session cookie, the permission guard, CSRF, rendering,
forms and their field errors, and the HTML error pages.

A page module in ``loyalty.console.pages`` exports ``ROUTES`` (its handlers) and ``NAV`` (its
entries in the menu); the router collects them all (see ``pages/__init__.py``). A handler
names the permission it needs in its ``opt`` (``opt=needs("budgets")``); GET and HEAD default
to ``read``, and a write without one is refused, so a forgotten permission never allows.
"""

from __future__ import annotations

import contextlib
import contextvars
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import msgspec
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.exceptions import HTTPException, NotFoundException
from litestar.handlers.base import BaseRouteHandler
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty.console import service
from loyalty.console.core import ALL_PERMISSIONS, csrf_ok, csrf_token, may
from loyalty.console.service import ConsoleSession
from loyalty.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound, Unprocessable
from loyalty.http import problems

PREFIX = "/console"
COOKIE = "loyalty_console"
# Before login there is no session to bind a CSRF token to: the login form carries a random
# value that must match this cookie (double submit).
LOGIN_CSRF_COOKIE = "loyalty_console_login"
CSRF_FIELD = "_csrf"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
CSRF_HEADER = "x-csrf-token"
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})

T = TypeVar("T")


def needs(permission: str, **opt: Any) -> dict[str, Any]:
    """A handler's ``opt``: the console permission it needs (see console.core.PERMISSIONS)."""
    if permission not in ALL_PERMISSIONS:
        raise ValueError(f"unknown console permission {permission!r}")
    return {"permission": permission, **opt}


PUBLIC: dict[str, Any] = {"console_public": True}


class NotLoggedIn(Exception):
    """No live session: the page sends the browser to the login form."""


class ConsoleForbidden(Exception):
    def __init__(self, permission: str, role: str) -> None:
        super().__init__(permission)
        self.permission = permission
        self.role = role


class CsrfRefused(Exception):
    """A write without its form's CSRF token (or with another session's)."""


@dataclass(frozen=True, slots=True)
class NavEntry:
    label: str
    path: str
    permission: str = "read"
    order: int = 100


def now() -> datetime:
    return datetime.now(UTC)


async def console_guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """Every console route: a live session, the handler's permission, and CSRF on writes."""
    opt = handler.opt
    if opt.get("console_public"):
        return
    token = connection.cookies.get(COOKIE)
    if not token:
        raise NotLoggedIn
    settings = connection.app.state.settings
    engine: AsyncEngine = connection.app.state.engine
    method = str(connection.scope.get("method", "GET"))
    full_page = method == "GET" and connection.headers.get("hx-request") != "true"
    async with engine.begin() as conn:
        current = await service.session(
            conn, token, now=now(), idle=timedelta(minutes=settings.console_idle_minutes)
        )
        # The programme switcher in the page header (full pages only, not htmx fragments).
        programmes = await service.programmes_of(conn, current.operator_id) if current and full_page else []
    if current is None:
        raise NotLoggedIn
    state = connection.scope.setdefault("state", {})
    state["console"] = current
    state["console_programmes"] = programmes
    permission = opt.get("permission")
    if permission is None:
        if method not in _SAFE:
            # A write route that forgot to name its permission is refused, never allowed.
            raise ConsoleForbidden("(undeclared)", current.role)
        permission = "read"
    if not may(current.role, permission):
        raise ConsoleForbidden(permission, current.role)
    if method not in _SAFE:
        sent = connection.headers.get(CSRF_HEADER)
        if not sent and isinstance(connection, Request):
            form = await connection.form()
            value = form.get(CSRF_FIELD)
            sent = value if isinstance(value, str) else None
        if not csrf_ok(sent, current.token, secret=settings.secret_key or ""):
            raise CsrfRefused


def current(request: Request[Any, Any, Any]) -> ConsoleSession:
    """The session the guard found for this request."""
    session: ConsoleSession = request.scope["state"]["console"]
    return session


@contextlib.asynccontextmanager
async def transaction(request: Request[Any, Any, Any]) -> AsyncIterator[AsyncConnection]:
    """One write's transaction: committed when the block ends, rolled back if it raised.

    A handler that catches a DomainError to show the form again catches it outside this
    block, so nothing of a refused change is ever committed."""
    engine: AsyncEngine = request.app.state.engine
    async with engine.begin() as conn:
        yield conn


@contextlib.asynccontextmanager
async def reading(request: Request[Any, Any, Any]) -> AsyncIterator[AsyncConnection]:
    engine: AsyncEngine = request.app.state.engine
    async with engine.connect() as conn:
        yield conn


def nav_entries() -> list[NavEntry]:
    from loyalty.console.pages import NAV

    return NAV


def render(
    request: Request[Any, Any, Any],
    template: str,
    *,
    status_code: int = 200,
    **context: Any,
) -> Template:
    """A page (or, for htmx, a fragment template) with what every page needs in its context."""
    session: ConsoleSession | None = request.scope.get("state", {}).get("console")
    state = request.scope.get("state", {})
    base: dict[str, Any] = {
        "request": request,
        "session": session,
        "path": request.url.path,
        "programmes": state.get("console_programmes", []),
    }
    if session is not None:
        secret = request.app.state.settings.secret_key or ""
        base["csrf"] = csrf_token(session.token, secret=secret)
        # Also for macros imported without the page's context (see _csrf_global).
        _PAGE_CSRF.set(base["csrf"])
        base["can"] = lambda permission: may(session.role, permission)
        base["nav"] = [e for e in nav_entries() if may(session.role, e.permission)]
    base.update(context)
    return Template(template_name=template, context=base, status_code=status_code)


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    return request.headers.get("hx-request") == "true"


def see_other(request: Request[Any, Any, Any], path: str) -> Response[Any]:
    """After a successful write: go to ``path`` (a full navigation, also for htmx)."""
    if is_htmx(request):
        return Response(content=b"", status_code=204, headers={"HX-Redirect": path})
    return Redirect(path=path, status_code=303)


# -- forms ---------------------------------------------------------------------------------


async def form_data(request: Request[Any, Any, Any]) -> dict[str, str]:
    """The posted form as plain strings (the CSRF field left out); repeated names keep the last."""
    form = await request.form()
    return {k: v for k, v in form.items() if k != CSRF_FIELD and isinstance(v, str)}


def errors_of(exc: DomainError) -> dict[str, str]:
    """A refusal as ``{field: reason}`` for the form (``_form`` when it names no field)."""
    listed = exc.extra.get("errors") if isinstance(exc.extra, Mapping) else None
    if isinstance(listed, list) and listed:
        found = {}
        for item in listed:
            if isinstance(item, Mapping):
                found[str(item.get("field") or "_form")] = str(item.get("reason") or exc.detail)
        if found:
            return found
    field = exc.extra.get("field") if isinstance(exc.extra, Mapping) else None
    return {str(field) if field else "_form": exc.detail}


def parse(values: Mapping[str, Any], into: type[T]) -> T:
    """A form's strings as ``into`` (a msgspec Struct): numbers and booleans from text, empty
    strings as absent. A wrong value is an InvalidInput naming the field."""
    cleaned = {k: v for k, v in values.items() if v != ""}
    try:
        return msgspec.convert(cleaned, into, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = "_form"
        if " - at `$." in message:
            message, _, path = message.rpartition(" - at `$.")
            field = path.rstrip("`")
        raise InvalidInput(field, message) from exc


def utc_moment(field: str, value: str) -> datetime | None:
    """A datetime-local input, read in UTC (the forms say so); empty is None. A value that is
    not a date and time is an InvalidInput naming the field."""
    text = value.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(field, "expected a date and time such as 2026-12-01T09:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def utc_input(moment: datetime | None) -> str:
    """A moment as a datetime-local input's value, in UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if moment else ""


# -- errors as pages -------------------------------------------------------------------------


def _error_page(request: Request[Any, Any, Any], status: int, title: str, detail: str) -> Response[Any]:
    if is_htmx(request):
        # A fragment in place of whatever the request was to update.
        return render(request, "fragments/error.html", status_code=status, title=title, detail=detail)
    return render(request, "error.html", status_code=status, title=title, detail=detail)


def _not_logged_in(request: Request[Any, Any, Any], _: NotLoggedIn) -> Response[Any]:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    login = f"{PREFIX}/login?next={quote(target, safe='')}"
    if is_htmx(request):
        return Response(content=b"", status_code=401, headers={"HX-Redirect": login})
    if request.method not in _SAFE:
        return Redirect(path=f"{PREFIX}/login", status_code=303)
    return Redirect(path=login, status_code=303)


def _forbidden(request: Request[Any, Any, Any], exc: ConsoleForbidden) -> Response[Any]:
    return _error_page(
        request,
        403,
        "Not allowed",
        f"Your role ({exc.role}) does not include this ({exc.permission}). Ask an admin of the programme.",
    )


def _csrf(request: Request[Any, Any, Any], _: CsrfRefused) -> Response[Any]:
    return _error_page(
        request,
        403,
        "Form expired",
        "This form was not sent from this session (its security token is missing or stale). "
        "Reload the page and try again.",
    )


def _domain(request: Request[Any, Any, Any], exc: DomainError) -> Response[Any]:
    status = 400
    if isinstance(exc, NotFound):
        status = 404
    elif isinstance(exc, Conflict):
        status = 409
    elif isinstance(exc, Unprocessable):
        status = 422
    elif isinstance(exc, Forbidden):
        status = 403
    return _error_page(request, status, "Could not do that", exc.detail)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, NotFoundException):
        return _error_page(request, 404, "Not found", "There is no such page.")
    return _error_page(request, exc.status_code, "Could not do that", str(exc.detail))


def _internal(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    unavailable = problems.unavailable_service(exc)
    if unavailable is not None:
        return _error_page(
            request, 503, "Unavailable", f"{unavailable} cannot be reached just now. Try again in a moment."
        )
    problems.internal_to_problem(request, exc)  # logs it with the request id
    return _error_page(request, 500, "Something went wrong", "The error has been logged.")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    NotLoggedIn: _not_logged_in,
    ConsoleForbidden: _forbidden,
    CsrfRefused: _csrf,
    DomainError: _domain,
    HTTPException: _http,
    Exception: _internal,
}


def login_csrf() -> str:
    return secrets.token_urlsafe(24)


def session_cookie(request: Request[Any, Any, Any], value: str, *, max_age: int | None) -> Cookie:
    return Cookie(
        key=COOKIE,
        value=value,
        path=PREFIX,
        httponly=True,
        samesite="lax",
        secure=bool(request.app.state.settings.https),
        max_age=max_age,
    )


def routers() -> list[Any]:
    """The console's routes under /console (guarded), and its static files (public)."""
    from pathlib import Path

    from litestar import Router
    from litestar.datastructures import CacheControlHeader
    from litestar.static_files import create_static_files_router

    from loyalty.console.pages import ROUTES

    static = Path(__file__).parent / "static"
    return [
        Router(
            path=PREFIX,
            route_handlers=ROUTES,
            guards=[console_guard],
            exception_handlers=EXCEPTION_HANDLERS,
            include_in_schema=False,
            # Forms, not JSON (edge.EdgeChecks reads this).
            opt={"body_media_type": FORM_TYPES},
        ),
        create_static_files_router(
            path=f"{PREFIX}/static",
            directories=[static],
            include_in_schema=False,
            cache_control=CacheControlHeader(max_age=3600, private=True),
            name="console-static",
        ),
    ]


_PAGE_CSRF: contextvars.ContextVar[str] = contextvars.ContextVar("console_csrf", default="")


def _csrf_global() -> str:
    """``csrf_token()`` in templates: the CSRF token of the page being rendered (the handler's
    task renders its own template, so the value set by ``render`` is this request's)."""
    return _PAGE_CSRF.get()


def template_config() -> Any:
    from pathlib import Path

    from litestar.plugins.jinja import JinjaTemplateEngine
    from litestar.template.config import TemplateConfig

    def setup(engine: JinjaTemplateEngine) -> None:
        engine.engine.globals["csrf_token"] = _csrf_global

    return TemplateConfig(
        directory=Path(__file__).parent / "templates", engine=JinjaTemplateEngine, engine_callback=setup
    )

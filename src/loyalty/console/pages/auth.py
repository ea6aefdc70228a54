"""Login, logout and switching programme."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromPath
from litestar.response import Redirect
from redis.asyncio import Redis
from redis.exceptions import RedisError

from loyalty.console import service
from loyalty.console.web import (
    LOGIN_CSRF_COOKIE,
    PREFIX,
    PUBLIC,
    current,
    form_data,
    login_csrf,
    needs,
    now,
    render,
    see_other,
    session_cookie,
    transaction,
)

# The window of the per-address login limit (settings.console_login_limit attempts in it).
LOGIN_WINDOW_SECONDS = 300


def _safe_next(value: str | None) -> str:
    """Only a path inside the console: never an open redirect to another site."""
    if not value:
        return PREFIX
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or not value.startswith(PREFIX) or value.startswith("//"):
        return PREFIX
    return value


def _login_page(request: Request[Any, Any, Any], *, status_code: int = 200, **context: Any) -> Response[Any]:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or login_csrf()
    page = render(
        request,
        "login.html",
        status_code=status_code,
        login_csrf=token,
        next=_safe_next(request.query_params.get("next")),
        **context,
    )
    page.cookies.append(
        Cookie(
            key=LOGIN_CSRF_COOKIE,
            value=token,
            path=f"{PREFIX}/login",
            httponly=True,
            samesite="strict",
            secure=bool(request.app.state.settings.https),
        )
    )
    return page


@get("/login", opt=PUBLIC, name="console-login")
async def login_form(request: Request[Any, Any, Any]) -> Response[Any]:
    return _login_page(request)


async def _throttled(request: Request[Any, Any, Any]) -> bool:
    """Too many attempts from this address lately; without Redis, no throttle (the per-account
    lockout still holds)."""
    limit = request.app.state.settings.console_login_limit
    if limit <= 0:
        return False
    redis: Redis = request.app.state.redis
    address = request.client.host if request.client else "-"
    key = f"console:login:{address}:{int(now().timestamp()) // LOGIN_WINDOW_SECONDS}"
    with contextlib.suppress(RedisError, OSError, TimeoutError):
        pipe = redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, LOGIN_WINDOW_SECONDS + 1)
        count, _ = await pipe.execute()
        return int(count) > limit
    return False


@post("/login", opt=PUBLIC, name="console-login-submit")
async def login_submit(request: Request[Any, Any, Any]) -> Response[Any]:
    values = await form_data(request)
    sent = (await request.form()).get("_csrf")
    email = values.get("email", "")
    if not sent or sent != request.cookies.get(LOGIN_CSRF_COOKIE):
        return _login_page(
            request,
            status_code=403,
            email=email,
            error="This form has expired. Please log in again.",
        )
    if await _throttled(request):
        return _login_page(
            request,
            status_code=429,
            email=email,
            error="Too many login attempts from your address. Wait a few minutes and try again.",
        )
    refused: service.LoginRefused | None = None
    # The failure counter is committed with a refusal too.
    async with transaction(request) as conn:
        try:
            token, _ = await service.login(conn, email=email, password=values.get("password", ""), now=now())
        except service.LoginRefused as exc:
            refused = exc
    if refused is not None:
        return _login_page(
            request,
            status_code=401 if refused.code == "login_refused" else 423,
            email=email,
            error=refused.detail,
            error_code=refused.code,
        )
    response: Response[Any] = Redirect(path=_safe_next(values.get("next")), status_code=303)
    response.cookies.append(session_cookie(request, token, max_age=None))
    response.cookies.append(Cookie(key=LOGIN_CSRF_COOKIE, value="", path=f"{PREFIX}/login", max_age=0))
    return response


@post("/logout", opt=needs("read"), name="console-logout")
async def logout(request: Request[Any, Any, Any]) -> Response[Any]:
    async with transaction(request) as conn:
        await service.logout(conn, current(request).token)
    response: Response[Any] = Redirect(path=f"{PREFIX}/login", status_code=303)
    response.cookies.append(session_cookie(request, "", max_age=0))
    return response


@post("/switch", opt=needs("read"), name="console-switch")
async def switch(request: Request[Any, Any, Any]) -> Response[Any]:
    values = await form_data(request)
    async with transaction(request) as conn:
        await service.switch_programme(conn, current(request), values.get("programme", ""))
    return see_other(request, PREFIX)


ROUTES = [login_form, login_submit, logout, switch]


@get("/{rest:path}", name="console-not-found")
async def not_found(request: Request[Any, Any, Any], rest: FromPath[str]) -> Response[Any]:
    """Any other console address: a page saying so (after login, like every page)."""
    return render(request, "error.html", status_code=404, title="Not found", detail="There is no such page.")


ROUTES.append(not_found)

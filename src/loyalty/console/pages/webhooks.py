"""Webhooks: the programme's endpoints, each one's delivery log, redelivery, the signing secret
(shown once, when made or rotated) and a test message.

Every role may read; every change (and a test, which sends a request out) needs ``webhooks``
(admin)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Template

from loyalty.console.web import (
    NavEntry,
    current,
    errors_of,
    is_htmx,
    needs,
    parse,
    reading,
    render,
    see_other,
    transaction,
)
from loyalty.errors import DomainError, InvalidInput
from loyalty.webhooks import core, service
from loyalty.webhooks import schemas as s
from loyalty.webhooks.targets import TargetPolicy

BASE = "/console/webhooks"
LOG_PAGE = 25
EVENT_TYPES = sorted(core.EVENT_TYPES)


def _policy(request: Request[Any, Any, Any]) -> TargetPolicy:
    return TargetPolicy.from_settings(request.app.state.settings)


@get("/webhooks", name="console-webhooks")
async def endpoints(request: Request[Any, Any, Any]) -> Template:
    return await _list(request)


async def _list(request: Request[Any, Any, Any], *, status_code: int = 200, **context: Any) -> Template:
    async with reading(request) as conn:
        found = await service.list_endpoints(conn, current(request).principal())
    context.setdefault("errors", {})
    context.setdefault("values", {"event_types": ["*"]})
    return render(
        request,
        "webhooks/list.html",
        status_code=status_code,
        endpoints=found.items,
        event_types=EVENT_TYPES,
        **context,
    )


@post("/webhooks", opt=needs("webhooks"), name="console-webhooks-create")
async def create(request: Request[Any, Any, Any]) -> Template:
    form = await request.form()
    types = [t for t in form.getall("event_types") if isinstance(t, str)] if "event_types" in form else []
    values = {
        "url": str(form.get("url") or "").strip(),
        "description": str(form.get("description") or ""),
        "event_types": types,
    }
    try:
        data = parse(values, s.EndpointCreate)
        if not types:
            raise InvalidInput("event_types", "choose at least one event type, or all events")
        async with transaction(request) as conn:
            made = await service.create_endpoint(
                conn, current(request).principal(), data, policy=_policy(request)
            )
    except DomainError as exc:
        errors = {k.split("[", 1)[0]: v for k, v in errors_of(exc).items()}
        return await _list(request, status_code=400, errors=errors, values=values)
    return await _detail(request, made.id, secret=made.secret, notice="Endpoint created.")


async def _detail(
    request: Request[Any, Any, Any], endpoint_id: int, *, status_code: int = 200, **context: Any
) -> Template:
    who = current(request).principal()
    status = request.query_params.get("status") or None
    cursor = request.query_params.get("cursor") or None
    async with reading(request) as conn:
        endpoint = await service.get_endpoint(conn, who, endpoint_id)
        log = await service.deliveries(
            conn, who, endpoint_id=endpoint_id, status=status, cursor=cursor, limit=LOG_PAGE
        )
    return render(
        request,
        "webhooks/_log.html" if is_htmx(request) else "webhooks/detail.html",
        status_code=status_code,
        endpoint=endpoint,
        log=log,
        status=status or "",
        statuses=service.DELIVERY_STATUSES,
        log_cursor=cursor,
        **context,
    )


@get("/webhooks/{endpoint_id:int}", name="console-webhook")
async def detail(request: Request[Any, Any, Any], endpoint_id: FromPath[int]) -> Template:
    return await _detail(request, endpoint_id)


@post("/webhooks/{endpoint_id:int}/active", opt=needs("webhooks"), name="console-webhook-active")
async def set_active(request: Request[Any, Any, Any], endpoint_id: FromPath[int]) -> Response[Any]:
    form = await request.form()
    active = form.get("active") == "true"
    async with transaction(request) as conn:
        await service.update_endpoint(
            conn,
            current(request).principal(),
            endpoint_id,
            s.EndpointUpdate(active=active),
            policy=_policy(request),
        )
    return see_other(request, f"{BASE}/{endpoint_id}")


@post("/webhooks/{endpoint_id:int}/delete", opt=needs("webhooks"), name="console-webhook-delete")
async def remove(request: Request[Any, Any, Any], endpoint_id: FromPath[int]) -> Response[Any]:
    async with transaction(request) as conn:
        await service.delete_endpoint(conn, current(request).principal(), endpoint_id)
    return see_other(request, BASE)


@post("/webhooks/{endpoint_id:int}/rotate", opt=needs("webhooks"), name="console-webhook-rotate")
async def rotate(request: Request[Any, Any, Any], endpoint_id: FromPath[int]) -> Template:
    async with transaction(request) as conn:
        rotated = await service.rotate_secret(conn, current(request).principal(), endpoint_id)
    return await _detail(
        request,
        endpoint_id,
        secret=rotated.secret,
        notice="New secret made: it signs every message from now on.",
    )


@post("/webhooks/{endpoint_id:int}/test", opt=needs("webhooks"), name="console-webhook-test")
async def test(request: Request[Any, Any, Any], endpoint_id: FromPath[int]) -> Template:
    async with reading(request) as conn:
        result = await service.ping(conn, current(request).principal(), endpoint_id, policy=_policy(request))
    return await _detail(request, endpoint_id, ping=result)


@post("/webhooks/deliveries/{delivery_id:int}/redeliver", opt=needs("webhooks"), name="console-redeliver")
async def redeliver(request: Request[Any, Any, Any], delivery_id: FromPath[int]) -> Response[Any]:
    async with transaction(request) as conn:
        queued = await service.redeliver(conn, current(request).principal(), delivery_id)
    return see_other(request, f"{BASE}/{queued.endpoint_id}")


ROUTES = [endpoints, create, detail, set_active, remove, rotate, test, redeliver]
NAV = [NavEntry("Webhooks", BASE, order=80)]

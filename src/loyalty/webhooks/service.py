"""Webhook use cases: endpoints, the delivery log, redelivery, pings, settings. Never commits."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import UTC, datetime

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.errors import InvalidInput, NotFound
from loyalty.http.principal import Principal
from loyalty.webhooks import core, repository, targets
from loyalty.webhooks import schemas as s
from loyalty.webhooks.targets import TargetPolicy

TIMEOUT = httpx.Timeout(10.0, connect=5.0)
MAX_ERROR = 500
DELIVERY_STATUSES = ("pending", "failed", "succeeded", "dead")


def _endpoint_not_found(endpoint_id: int) -> NotFound:
    return NotFound(
        "No webhook endpoint with this id in the programme.",
        code="webhook_endpoint_not_found",
        extra={"endpoint_id": endpoint_id},
    )


async def _checked_url(url: str, policy: TargetPolicy | None) -> str:
    reason = core.check_url(url) or await targets.url_refusal(url, policy or TargetPolicy())
    if reason:
        raise InvalidInput("url", reason)
    return url


def _checked_types(types: list[str]) -> list[str]:
    reason = core.check_event_types(types)
    if reason:
        raise InvalidInput("event_types", reason)
    return core.normalise_event_types(types)


async def create_endpoint(
    conn: AsyncConnection, who: Principal, req: s.EndpointCreate, *, policy: TargetPolicy | None = None
) -> s.EndpointWithSecret:
    """``policy`` is the deployment's webhook target policy (default: public targets only)."""
    secret = core.new_secret()
    row = await repository.create_endpoint(
        conn,
        who.programme_id,
        url=await _checked_url(req.url, policy),
        description=req.description,
        event_types=_checked_types(req.event_types),
        secret=secret,
    )
    after = {**row, "secret_sha256": _fingerprint(secret)}
    await audit.record(
        conn,
        who,
        action="webhook_endpoint.create",
        entity="webhook_endpoint",
        entity_id=row["id"],
        after=after,
    )
    return s.EndpointWithSecret(**row, secret=secret)


def _fingerprint(secret: str) -> str:
    """What the audit trail keeps of a signing secret: enough to tell two apart, nothing to sign with."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


async def list_endpoints(conn: AsyncConnection, who: Principal) -> s.EndpointList:
    return s.EndpointList(items=[s.view(r) for r in await repository.list_endpoints(conn, who.programme_id)])


async def get_endpoint(conn: AsyncConnection, who: Principal, endpoint_id: int) -> s.EndpointView:
    row = await repository.get_endpoint(conn, who.programme_id, endpoint_id)
    if row is None:
        raise _endpoint_not_found(endpoint_id)
    return s.view(row)


async def update_endpoint(
    conn: AsyncConnection,
    who: Principal,
    endpoint_id: int,
    req: s.EndpointUpdate,
    *,
    policy: TargetPolicy | None = None,
) -> s.EndpointView:
    before = await repository.get_endpoint(conn, who.programme_id, endpoint_id)
    row = await repository.update_endpoint(
        conn,
        who.programme_id,
        endpoint_id,
        url=await _checked_url(req.url, policy) if req.url is not None else None,
        description=req.description,
        event_types=_checked_types(req.event_types) if req.event_types is not None else None,
        active=req.active,
    )
    if row is None or before is None:
        raise _endpoint_not_found(endpoint_id)
    view = s.view(row)
    await audit.record(
        conn,
        who,
        action="webhook_endpoint.update",
        entity="webhook_endpoint",
        entity_id=endpoint_id,
        before=s.view(before),
        after=view,
    )
    return view


async def delete_endpoint(conn: AsyncConnection, who: Principal, endpoint_id: int) -> None:
    before = await repository.get_endpoint(conn, who.programme_id, endpoint_id)
    if before is None or not await repository.delete_endpoint(conn, who.programme_id, endpoint_id):
        raise _endpoint_not_found(endpoint_id)
    await audit.record(
        conn,
        who,
        action="webhook_endpoint.delete",
        entity="webhook_endpoint",
        entity_id=endpoint_id,
        before=s.view(before),
    )


async def rotate_secret(conn: AsyncConnection, who: Principal, endpoint_id: int) -> s.EndpointWithSecret:
    """A new secret signs every message from now on, retries of older events included."""
    before = await repository.get_endpoint(conn, who.programme_id, endpoint_id)
    row = await repository.rotate_secret(conn, who.programme_id, endpoint_id, core.new_secret())
    if row is None or before is None:
        raise _endpoint_not_found(endpoint_id)
    await audit.record(
        conn,
        who,
        action="webhook_endpoint.rotate_secret",
        entity="webhook_endpoint",
        entity_id=endpoint_id,
        before={"secret_sha256": _fingerprint(before["secret"])},
        after={"secret_sha256": _fingerprint(row["secret"])},
    )
    return s.EndpointWithSecret(**row)


async def deliveries(
    conn: AsyncConnection,
    who: Principal,
    *,
    endpoint_id: int | None,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> s.DeliveryPage:
    if status is not None and status not in DELIVERY_STATUSES:
        raise InvalidInput("status", f"must be one of {list(DELIVERY_STATUSES)}")
    rows = await repository.page_deliveries(
        conn,
        who.programme_id,
        endpoint_id=endpoint_id,
        status=status,
        before_id=_decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    items = [s.DeliveryView(**r) for r in rows[:limit]]
    more = len(rows) > limit
    return s.DeliveryPage(items=items, next_cursor=_encode_cursor(items[-1].id) if more and items else None)


async def redeliver(conn: AsyncConnection, who: Principal, delivery_id: int) -> s.DeliveryView:
    before = await repository.get_delivery(conn, who.programme_id, delivery_id)
    row = await repository.redeliver(conn, who.programme_id, delivery_id)
    if row is None:
        raise NotFound(
            "No webhook delivery with this id in the programme.",
            code="webhook_delivery_not_found",
            extra={"delivery_id": delivery_id},
        )
    await audit.record(
        conn,
        who,
        action="webhook_delivery.redeliver",
        entity="webhook_delivery",
        entity_id=delivery_id,
        before=before,
        after=row,
    )
    return s.DeliveryView(**row)


async def ping(
    conn: AsyncConnection, who: Principal, endpoint_id: int, *, policy: TargetPolicy | None = None
) -> s.PingResult:
    """Sends a signed webhook.ping now and reports the answer; it is not logged as a delivery."""
    row = await repository.get_endpoint(conn, who.programme_id, endpoint_id)
    if row is None:
        raise _endpoint_not_found(endpoint_id)
    # End the read transaction: no connection sits idle in a transaction during network I/O.
    await conn.rollback()
    now = datetime.now(UTC)
    message = core.sign(
        secret=row["secret"],
        msg_id=f"ping_{uuid.uuid4().hex}",
        event_type=core.PING,
        occurred_at=now,
        data={"endpoint_id": endpoint_id},
        now=now,
    )
    async with targets.delivery_client(policy or TargetPolicy(), TIMEOUT) as client:
        status_code, error = await send(client, row["url"], message)
    return s.PingResult(
        webhook_id=message.id,
        delivered=status_code is not None and core.succeeded(status_code),
        status_code=status_code,
        error=error,
    )


async def send(client: httpx.AsyncClient, url: str, message: core.Message) -> tuple[int | None, str | None]:
    """POSTs one signed message: (status code, error) — a network failure has no status."""
    try:
        response = await client.post(url, content=message.body, headers=message.headers)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:MAX_ERROR] or type(exc).__name__
    if core.succeeded(response.status_code):
        return response.status_code, None
    return response.status_code, f"HTTP {response.status_code}: {response.text[:200]}"[:MAX_ERROR]


async def get_settings(conn: AsyncConnection, who: Principal) -> s.WebhookSettingsView:
    return s.WebhookSettingsView(**await repository.get_settings(conn, who.programme_id))


async def put_settings(
    conn: AsyncConnection, who: Principal, req: s.WebhookSettingsUpdate
) -> s.WebhookSettingsView:
    before = await repository.get_settings(conn, who.programme_id)
    await repository.put_settings(conn, who.programme_id, req.expiring_soon_days)
    after = s.WebhookSettingsView(expiring_soon_days=req.expiring_soon_days)
    await audit.record(
        conn,
        who,
        action="webhook_settings.update",
        entity="webhook_settings",
        entity_id=who.programme_code,
        before=before,
        after=after,
    )
    return after


def _encode_cursor(delivery_id: int) -> str:
    return base64.urlsafe_b64encode(f"d:{delivery_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    if not raw.startswith("d:") or not raw[2:].isdigit():
        raise InvalidInput("cursor", "is not a cursor this API returned")
    return int(raw[2:])

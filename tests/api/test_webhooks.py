"""Webhook endpoints, the delivery log, redelivery and pings, through the API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.webhooks import tasks
from loyalty.webhooks.targets import TargetPolicy
from tests.api.helpers import Api, field_of, problem
from tests.webhook_receiver import Receiver, ThreadedReceiver

ENDPOINTS = "/v1/webhooks/endpoints"
DELIVERIES = "/v1/webhooks/deliveries"

# The receivers listen on 127.0.0.1: these tests run as a deployment that allows it.
LOCAL = TargetPolicy(allow_private=True)


@pytest.fixture(autouse=True)
async def _quiet_endpoints(engine: AsyncEngine) -> AsyncIterator[None]:
    """The worker's claim spans every programme: a finished test's endpoints must not be retried."""
    yield
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE webhook_endpoints SET active = false WHERE active"))


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()


async def _event(engine: AsyncEngine, programme_id: int, type_: str, member: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO domain_events (programme_id, type, subject, payload) "
                "VALUES (:p, :t, :s, CAST(:d AS jsonb))"
            ),
            {"p": programme_id, "t": type_, "s": f"member:{member}", "d": json.dumps({"member_id": member})},
        )


async def test_endpoint_crud_shows_the_secret_only_on_create_and_rotate(api: Api) -> None:
    created = (
        await api.post(
            ENDPOINTS,
            {
                "url": "https://crm.example/hooks",
                "event_types": ["tier.changed", "points.earned"],
                "description": "CRM",
            },
        )
    ).json()
    assert created["secret"].startswith("whsec_")
    assert created["event_types"] == ["points.earned", "tier.changed"]
    assert created["active"] is True
    path = f"{ENDPOINTS}/{created['id']}"

    shown = (await api.get(path)).json()
    assert "secret" not in shown
    assert all("secret" not in e for e in (await api.get(ENDPOINTS)).json()["items"])

    updated = (await api.patch(path, {"event_types": ["*"], "active": False})).json()
    assert (updated["event_types"], updated["active"]) == (["*"], False)
    assert updated["disabled_at"] is not None
    resumed = (await api.patch(path, {"active": True, "url": "http://crm.example/v2"})).json()
    assert (resumed["active"], resumed["disabled_at"], resumed["url"]) == (
        True,
        None,
        "http://crm.example/v2",
    )

    rotated = (await api.post(f"{path}/rotate-secret", expect=200)).json()
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != created["secret"]

    r = await api.client.delete(path, headers=api.headers())
    assert r.status_code == 204
    problem(await api.get(path, expect=None), 404, "webhook_endpoint_not_found")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://x.example/h", "event_types": ["*"]}, "url"),
        ({"url": "https:///nohost", "event_types": ["*"]}, "url"),
        ({"url": "https://u:p@x.example/h", "event_types": ["*"]}, "url"),
        ({"url": "https://x.example/h", "event_types": ["points.stolen"]}, "event_types"),
        ({"url": "https://x.example/h", "event_types": []}, "event_types"),
        ({"url": "https://x.example/h"}, "event_types"),
        ({"url": "https://x.example/h", "event_types": ["*"], "secret": "mine"}, "secret"),
    ],
)
async def test_bad_endpoints_are_400s_naming_the_field(api: Api, body, field) -> None:
    answer = problem(await api.post(ENDPOINTS, body, expect=None), 400)
    assert field_of(answer) == field
    assert "event_types" in answer["detail"] or field != "body"


async def test_only_operators_manage_webhooks_and_programmes_are_isolated(api: Api, other: Api) -> None:
    created = (await api.post(ENDPOINTS, {"url": "https://x.example/h", "event_types": ["*"]})).json()
    problem(
        await api.post(
            ENDPOINTS, {"url": "https://x.example/h", "event_types": ["*"]}, role="crm", expect=None
        ),
        403,
    )
    problem(await api.get(ENDPOINTS, role="ecommerce", expect=None), 403)

    path = f"{ENDPOINTS}/{created['id']}"
    problem(await other.get(path, expect=None), 404)
    problem(await other.patch(path, {"active": False}, expect=None), 404)
    problem(await other.post(f"{path}/rotate-secret", expect=None), 404)
    assert (await other.get(ENDPOINTS)).json()["items"] == []
    r = await other.client.delete(path, headers=other.headers())
    problem(r, 404)
    assert (await api.get(path)).json()["active"] is True


async def test_delivery_log_filters_pages_and_redelivers(api: Api, other: Api, engine, receiver) -> None:
    created = (await api.post(ENDPOINTS, {"url": receiver.url, "event_types": ["points.earned"]})).json()
    receiver.secret = created["secret"]
    receiver.respond = lambda r, _seen: 500 if r.json["data"]["member_id"] == "bad" else 200
    for member in ("a", "b", "bad"):
        await _event(engine, api.programme.id, "points.earned", member)
    await _event(engine, api.programme.id, "tier.changed", "a")  # not subscribed
    await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL})

    log = (await api.get(DELIVERIES, params={"endpoint": created["id"]})).json()
    assert [d["subject"] for d in log["items"]] == ["member:bad", "member:b", "member:a"]
    assert [d["status"] for d in log["items"]] == ["failed", "succeeded", "succeeded"]
    page = (await api.get(DELIVERIES, params={"limit": 2})).json()
    rest = (await api.get(DELIVERIES, params={"limit": 2, "cursor": page["next_cursor"]})).json()
    assert [d["id"] for d in page["items"] + rest["items"]] == [d["id"] for d in log["items"]]
    assert rest["next_cursor"] is None
    [failed] = (await api.get(DELIVERIES, params={"status": "failed"})).json()["items"]
    assert failed["last_status_code"] == 500 and failed["attempts"] == 1
    assert (
        field_of(problem(await api.get(DELIVERIES, params={"status": "lost"}, expect=None), 400)) == "status"
    )
    assert field_of(problem(await api.get(DELIVERIES, params={"cursor": "zz"}, expect=None), 400)) == "cursor"
    assert (await other.get(DELIVERIES)).json()["items"] == []

    # Redeliver a succeeded one: it goes out again with the same webhook-id.
    ok = log["items"][1]
    problem(await other.post(f"{DELIVERIES}/{ok['id']}/redeliver", expect=None), 404)
    queued = (await api.post(f"{DELIVERIES}/{ok['id']}/redeliver", expect=202)).json()
    assert (queued["status"], queued["attempts"]) == ("pending", 0)
    [audited] = (await api.get("/v1/audit", params={"action": "webhook_delivery.redeliver"})).json()["items"]
    assert audited["entity_id"] == str(ok["id"])
    assert (audited["before"]["status"], audited["after"]["status"]) == (ok["status"], "pending")
    before = [r.webhook_id for r in receiver.received if r.json["data"]["member_id"] == "b"]
    await tasks.deliver_webhooks({"engine": engine, "webhook_policy": LOCAL})
    after = [r.webhook_id for r in receiver.received if r.json["data"]["member_id"] == "b"]
    assert after == before * 2


async def test_ping_sends_a_signed_message_and_reports_the_answer(api: Api) -> None:
    threaded = ThreadedReceiver()
    try:
        await _ping(api, threaded.receiver)
    finally:
        threaded.stop()


async def _ping(api: Api, receiver: Receiver) -> None:
    created = (await api.post(ENDPOINTS, {"url": receiver.url, "event_types": ["*"]})).json()
    receiver.secret = created["secret"]
    result = (await api.post(f"{ENDPOINTS}/{created['id']}/test", expect=200)).json()
    assert result["delivered"] is True and result["status_code"] == 204, result
    [ping] = receiver.received
    assert ping.verified and ping.json["type"] == "webhook.ping"
    assert ping.webhook_id == result["webhook_id"]

    receiver.respond = lambda _r, _seen: 503
    failed = (await api.post(f"{ENDPOINTS}/{created['id']}/test", expect=200)).json()
    assert (failed["delivered"], failed["status_code"]) == (False, 503)


async def test_settings_set_the_expiring_soon_notice(api: Api) -> None:
    assert (await api.get("/v1/webhooks/settings")).json() == {"expiring_soon_days": None}
    r = await api.client.put("/v1/webhooks/settings", json={"expiring_soon_days": 14}, headers=api.headers())
    assert r.status_code == 200 and r.json() == {"expiring_soon_days": 14}
    assert (await api.get("/v1/webhooks/settings")).json() == {"expiring_soon_days": 14}
    r = await api.client.put("/v1/webhooks/settings", json={"expiring_soon_days": 0}, headers=api.headers())
    assert field_of(problem(r, 400)) == "expiring_soon_days"

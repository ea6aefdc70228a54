"""The Webhooks screen over HTTP: endpoints made, paused, tested, rotated and deleted by an
admin; the delivery log and redelivery; every write refused to a marketer on the server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.webhooks import tasks
from loyalty.webhooks.targets import TargetPolicy
from tests.console.helpers import console_csrf, login, make_operator
from tests.support import Programme
from tests.webhook_receiver import ThreadedReceiver

SECRET = re.compile(r"<code data-secret>(whsec_[^<]+)</code>")


@pytest.fixture
def receiver() -> Iterator[ThreadedReceiver]:
    threaded = ThreadedReceiver()
    yield threaded
    threaded.stop()


async def _as(client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, role: str) -> str:
    assert (await login(client, await make_operator(engine, programme.code, role))).status_code == 303
    screen = await client.get("/console/webhooks")
    # Every form of the screen carries its CSRF token.
    assert screen.status_code == 200 and 'name="_csrf" value=""' not in screen.text
    return await console_csrf(client)


async def _endpoints(engine: AsyncEngine, programme: Programme) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT id, url, active, secret FROM webhook_endpoints WHERE programme_id = :p ORDER BY id"),
            {"p": programme.id},
        )
        return [dict(r._mapping) for r in rows]


async def test_an_admin_manages_an_endpoint_and_its_log(
    console_client: AsyncTestClient[Any],
    engine: AsyncEngine,
    programme: Programme,
    receiver: ThreadedReceiver,
) -> None:
    csrf = await _as(console_client, engine, programme, "admin")
    url = receiver.receiver.url
    r = await console_client.post(
        "/console/webhooks",
        data={"_csrf": csrf, "url": url, "description": "crm", "event_types": ["points.earned"]},
    )
    assert r.status_code == 200, r.text
    secret = SECRET.search(r.text)
    [endpoint] = await _endpoints(engine, programme)
    assert secret and secret.group(1) == endpoint["secret"]  # shown once, on this answer
    path = f"/console/webhooks/{endpoint['id']}"
    again = await console_client.get(path)
    assert endpoint["secret"] not in again.text and "No deliveries yet" in again.text

    receiver.receiver.secret = endpoint["secret"]
    ping = await console_client.post(f"{path}/test", data={"_csrf": csrf})
    assert 'data-ping="delivered"' in ping.text
    assert [m.json["type"] for m in receiver.receiver.received] == ["webhook.ping"]

    # A real event: the worker's delivery job sends it and the log shows it.
    member = await console_client.post(
        "/v1/members", json={"member_id": "w-1"}, headers=programme.headers("operator")
    )
    assert member.status_code == 201
    budget = {"code": "b", "cap": 1000, "unit_cost_micros": 1}
    assert (
        await console_client.post("/v1/budgets", json=budget, headers=programme.headers("operator"))
    ).status_code == 201
    earn = {"member_id": "w-1", "points": 5, "budget": "b", "reference": "o-1"}
    assert (
        await console_client.post("/v1/earn", json=earn, headers=programme.headers("operator"))
    ).status_code in (200, 201)
    await tasks.deliver_webhooks({"engine": engine, "webhook_policy": TargetPolicy(allow_private=True)})
    log = await console_client.get(path)
    found = re.search(r'data-delivery="(\d+)" data-status="succeeded"', log.text)
    assert found and "points.earned" in log.text
    r = await console_client.post(
        f"/console/webhooks/deliveries/{found.group(1)}/redeliver",
        data={"_csrf": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert 'data-status="pending"' in (await console_client.get(path)).text
    live = await console_client.get(path, headers={"HX-Request": "true"})  # the log polls itself
    assert live.text.lstrip().startswith('<div id="delivery-log"') and 'hx-trigger="every 5s"' in live.text
    await tasks.deliver_webhooks({"engine": engine, "webhook_policy": TargetPolicy(allow_private=True)})
    settled = await console_client.get(path, headers={"HX-Request": "true"})
    assert 'data-status="succeeded"' in settled.text and "hx-trigger" not in settled.text

    r = await console_client.post(f"{path}/rotate", data={"_csrf": csrf})
    rotated = SECRET.search(r.text)
    [after] = await _endpoints(engine, programme)
    assert rotated and rotated.group(1) == after["secret"] != endpoint["secret"]

    r = await console_client.post(
        f"{path}/active", data={"_csrf": csrf, "active": "false"}, follow_redirects=False
    )
    assert r.status_code == 303 and not (await _endpoints(engine, programme))[0]["active"]
    r = await console_client.post(f"{path}/delete", data={"_csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and await _endpoints(engine, programme) == []


async def test_a_bad_endpoint_is_refused_next_to_its_field(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    csrf = await _as(console_client, engine, programme, "admin")
    r = await console_client.post(
        "/console/webhooks", data={"_csrf": csrf, "url": "ftp://example.com/x", "event_types": ["*"]}
    )
    assert r.status_code == 400 and 'id="e-url"' in r.text
    r = await console_client.post(
        "/console/webhooks", data={"_csrf": csrf, "url": "https://example.com/hook"}
    )
    assert r.status_code == 400 and 'id="e-event_types"' in r.text
    assert await _endpoints(engine, programme) == []


async def test_a_marketer_may_look_but_not_change(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    r = await console_client.post(
        "/v1/webhooks/endpoints",
        json={"url": "https://example.com/hook", "event_types": ["*"]},
        headers=programme.headers("operator"),
    )
    assert r.status_code == 201, r.text
    endpoint_id = r.json()["id"]
    csrf = await _as(console_client, engine, programme, "marketer")
    page = await console_client.get(f"/console/webhooks/{endpoint_id}")
    assert page.status_code == 200 and "Rotate secret" not in page.text
    for path, data in (
        ("/console/webhooks", {"url": "https://example.com/other", "event_types": ["*"]}),
        (f"/console/webhooks/{endpoint_id}/rotate", {}),
        (f"/console/webhooks/{endpoint_id}/active", {"active": "false"}),
        (f"/console/webhooks/{endpoint_id}/delete", {}),
        (f"/console/webhooks/{endpoint_id}/test", {}),
        ("/console/webhooks/deliveries/1/redeliver", {}),
    ):
        r = await console_client.post(path, data={"_csrf": csrf, **data}, follow_redirects=False)
        assert r.status_code == 403, path
    [endpoint] = await _endpoints(engine, programme)
    assert endpoint["active"] and endpoint["url"] == "https://example.com/hook"

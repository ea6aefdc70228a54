"""The webhook target policy: public addresses only unless the deployment allows private ones,
checked at create and update, and again when a delivery connects (DNS may have changed)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.app import create_app
from loyalty.http.principal import Principal
from loyalty.settings import Settings
from loyalty.webhooks import schemas as ws
from loyalty.webhooks import service, targets, tasks
from loyalty.webhooks.targets import TargetPolicy
from tests.api.helpers import field_of, problem
from tests.support import Programme, make_programme
from tests.webhook_receiver import Receiver

ENDPOINTS = "/v1/webhooks/endpoints"
PUBLIC = "93.184.216.34"


def _resolver(table: dict[str, list[str]]) -> targets.Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"unknown host {host}")
        return table[host]

    return resolve


@pytest.fixture(autouse=True)
async def _quiet_endpoints(engine: AsyncEngine) -> AsyncIterator[None]:
    yield
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE webhook_endpoints SET active = false WHERE active"))


@pytest.fixture
async def strict(settings: Settings) -> AsyncIterator[AsyncTestClient[Any]]:
    """The API as deployed by default: private webhook targets refused."""
    app = create_app(dataclasses.replace(settings, webhook_allow_private_targets=False))
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hooks",
        "http://localhost/hooks",
        "http://[::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://169.254.169.254/latest/meta-data",
        "https://10.1.2.3/hooks",
        "http://0.0.0.0/hooks",
        "http://[fd12::1]/hooks",
        "http://internal.shop.test/hooks",  # resolves to a private address (below)
        "http://mixed.shop.test/hooks",  # one public and one private address
    ],
)
async def test_private_targets_are_refused_at_create_and_update(
    strict: AsyncTestClient[Any], engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setattr(
        targets,
        "resolve_host",
        _resolver(
            {
                "localhost": ["127.0.0.1", "::1"],
                "internal.shop.test": ["10.20.30.40"],
                "mixed.shop.test": [PUBLIC, "192.168.0.7"],
                "hooks.shop.test": [PUBLIC],
            }
        ),
    )
    programme = await make_programme(engine)
    headers = programme.headers("operator")
    body = problem(
        await strict.post(ENDPOINTS, json={"url": url, "event_types": ["*"]}, headers=headers),
        400,
        "invalid_input",
    )
    assert field_of(body) == "url"
    assert "must be public" in body["detail"] and "LOYALTY_WEBHOOK_ALLOW_PRIVATE_TARGETS" in body["detail"]

    created = await strict.post(
        ENDPOINTS, json={"url": "https://hooks.shop.test/in", "event_types": ["*"]}, headers=headers
    )
    assert created.status_code == 201, created.text
    path = f"{ENDPOINTS}/{created.json()['id']}"
    body = problem(await strict.patch(path, json={"url": url}, headers=headers), 400, "invalid_input")
    assert field_of(body) == "url"
    assert (await strict.get(path, headers=headers)).json()["url"] == "https://hooks.shop.test/in"


async def test_a_host_that_does_not_resolve_yet_is_accepted_and_checked_at_delivery(
    strict: AsyncTestClient[Any], engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(targets, "resolve_host", _resolver({}))
    programme = await make_programme(engine)
    r = await strict.post(
        ENDPOINTS,
        json={"url": "https://later.shop.test/in", "event_types": ["*"]},
        headers=programme.headers("operator"),
    )
    assert r.status_code == 201, r.text


def _who(programme: Programme) -> Principal:
    return Principal(programme_id=programme.id, programme_code=programme.code, role="operator", key_id=0)


async def _one_event(engine: AsyncEngine, programme: Programme) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO domain_events (programme_id, type, subject, payload) "
                "VALUES (:p, 'points.earned', 'member:m', CAST('{\"member_id\": \"m\"}' AS jsonb))"
            ),
            {"p": programme.id},
        )


async def test_a_dns_change_to_a_private_address_is_refused_at_delivery(
    engine: AsyncEngine, receiver: Receiver
) -> None:
    programme = await make_programme(engine)
    url = f"http://receiver.shop.test:{receiver.port}/hooks"
    async with engine.begin() as conn:
        created = await service.create_endpoint(
            conn,
            _who(programme),
            ws.EndpointCreate(url=url, event_types=["*"]),
            policy=TargetPolicy(resolver=_resolver({"receiver.shop.test": [PUBLIC]})),
        )
    await _one_event(engine, programme)
    # Rebinding: the name now points at the service's own host.
    rebound = TargetPolicy(resolver=_resolver({"receiver.shop.test": ["127.0.0.1"]}))
    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": rebound}) >= 1
    async with engine.connect() as conn:
        status, error = (
            await conn.execute(
                text("SELECT status, last_error FROM webhook_deliveries WHERE endpoint_id = :e"),
                {"e": created.id},
            )
        ).one()
    assert status == "failed"
    assert "webhook target refused" in error and "127.0.0.1" in error and "loopback" in error
    assert receiver.received == []


class _LoopbackOnly(TargetPolicy):
    """A policy that accepts exactly 127.0.0.1: to see where a checked delivery connects."""

    def refusal(self, host: str, addresses: Any) -> str | None:
        addresses = list(addresses)
        return None if addresses == ["127.0.0.1"] else f"{addresses} refused"


async def test_a_checked_delivery_connects_to_the_address_it_checked(
    engine: AsyncEngine, receiver: Receiver
) -> None:
    """The name resolves only through the policy's resolver (the system's DNS does not know it),
    so the delivery arriving proves the connection went to the checked address; the Host header
    still names the URL's host."""
    programme = await make_programme(engine)
    url = f"http://receiver.shop.test:{receiver.port}/hooks"
    policy = _LoopbackOnly(resolver=_resolver({"receiver.shop.test": ["127.0.0.1"]}))
    async with engine.begin() as conn:
        created = await service.create_endpoint(
            conn, _who(programme), ws.EndpointCreate(url=url, event_types=["*"]), policy=policy
        )
    receiver.secret = created.secret
    await _one_event(engine, programme)
    assert await tasks.deliver_webhooks({"engine": engine, "webhook_policy": policy}) >= 1
    [received] = receiver.received
    assert received.verified
    assert received.headers["host"] == f"receiver.shop.test:{receiver.port}"


async def test_default_policy_comes_from_settings_and_refuses_private(settings: Settings) -> None:
    assert TargetPolicy.from_settings(None).allow_private is False
    assert (
        TargetPolicy.from_settings(
            dataclasses.replace(settings, webhook_allow_private_targets=False)
        ).allow_private
        is False
    )
    assert TargetPolicy.from_settings(settings).allow_private is True  # the test settings
    assert Settings.from_env({}).webhook_allow_private_targets is False


async def test_a_programme_cannot_allow_private_targets_through_the_api(
    strict: AsyncTestClient[Any], engine: AsyncEngine
) -> None:
    programme = await make_programme(engine)
    headers = programme.headers("operator")
    for body in ({"allow_private_targets": True}, {"expiring_soon_days": 7, "allow_private_targets": True}):
        r = await strict.put("/v1/webhooks/settings", json=body, headers=headers)
        assert r.status_code == 400, r.text
    r = await strict.post(
        ENDPOINTS,
        json={"url": "http://127.0.0.1/h", "event_types": ["*"], "allow_private_targets": True},
        headers=headers,
    )
    assert r.status_code == 400

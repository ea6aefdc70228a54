"""API keys: listing, revocation through the API and the CLI, and revocation on every process."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty import cli
from loyalty.app import create_app
from loyalty.auth.revocation import RevocationListener
from loyalty.auth.service import KeyCache, create_api_key
from loyalty.http.principal import Principal
from loyalty.settings import Settings
from tests.api.helpers import Api, problem
from tests.support import Programme

KEYS = "/v1/keys"


async def _new_key(engine: AsyncEngine, programme: Programme, role: str = "crm") -> tuple[int, str]:
    async with engine.begin() as conn:
        return await create_api_key(conn, programme_id=programme.id, role=role)


async def test_operators_list_keys_without_secrets(api: Api, other: Api) -> None:
    listed = (await api.get(KEYS)).json()["items"]
    assert sorted(k["role"] for k in listed) == ["crm", "ecommerce", "marketing", "operator"]
    for key in listed:
        assert key["prefix"].startswith("lk_") and len(key["prefix"]) == 10
        assert key["name"] == f"{key['role']} {key['prefix']}"  # the default name
        assert key["revoked_at"] is None
        assert set(key) == {"id", "prefix", "name", "role", "created_at", "revoked_at"}
    secrets = set(api.programme.keys.values())
    assert not any(secret in str(listed) for secret in secrets)
    assert not {k["id"] for k in listed} & {k["id"] for k in (await other.get(KEYS)).json()["items"]}
    problem(await api.get(KEYS, role="crm", expect=None), 403, "role_not_allowed")


async def test_a_revoked_key_stops_working_at_once(api: Api, other: Api, engine: AsyncEngine) -> None:
    key_id, key = await _new_key(engine, api.programme)
    auth = {"Authorization": f"Bearer {key}"}
    assert (await api.client.get("/v1/programme", headers=auth)).status_code == 200  # now cached
    # Another programme's operator cannot revoke it.
    problem(await other.post(f"{KEYS}/{key_id}/revoke", expect=None), 404, "api_key_not_found")
    revoked = (await api.post(f"{KEYS}/{key_id}/revoke", expect=200)).json()
    assert revoked["id"] == key_id and revoked["revoked_at"] is not None
    again = (await api.post(f"{KEYS}/{key_id}/revoke", expect=200)).json()
    assert again["revoked_at"] == revoked["revoked_at"]
    await _refused_within_a_second(api.client, key)


async def _refused_within_a_second(client: AsyncTestClient[Any], key: str) -> float:
    started = time.monotonic()
    while True:
        r = await client.get("/v1/programme", headers={"Authorization": f"Bearer {key}"})
        if r.status_code == 401:
            problem(r, 401, "invalid_api_key")
            return time.monotonic() - started
        assert r.status_code == 200
        assert time.monotonic() - started < 1.0, "a revoked key was still accepted after 1 s"
        await asyncio.sleep(0.02)


async def test_revocation_reaches_every_api_process(
    settings: Settings, api: Api, engine: AsyncEngine
) -> None:
    """Two app instances (as two API processes): each has cached the key; revoking it on one
    makes both refuse it within a second, with a key cache TTL far longer than that."""
    long_ttl = dataclasses.replace(settings, key_cache_ttl_seconds=600)
    key_id, key = await _new_key(engine, api.programme)
    async with (
        AsyncTestClient(app=create_app(long_ttl)) as first,
        AsyncTestClient(app=create_app(long_ttl)) as second,
    ):
        for client in (first, second):
            listener = client.app.state.authenticator.cache
            for _ in range(100):  # the listener connects in the background
                if listener.listening:
                    break
                await asyncio.sleep(0.02)
            assert listener.listening
            assert (
                await client.get("/v1/programme", headers={"Authorization": f"Bearer {key}"})
            ).status_code == 200
        r = await first.post(f"{KEYS}/{key_id}/revoke", headers=api.headers())
        assert r.status_code == 200, r.text
        await _refused_within_a_second(second, key)
        await _refused_within_a_second(first, key)


async def test_without_a_listener_keys_are_cached_for_a_second_at_most() -> None:
    cache = KeyCache(ttl=600)
    listener = RevocationListener("postgresql://127.0.0.1:9/nothing", cache)  # cannot connect
    listener.start()
    try:
        await asyncio.sleep(0.3)
        assert not cache.listening
        principal = Principal(programme_id=1, programme_code="p", role="crm", key_id=1)
        cache.put(b"k", principal)
        assert cache.get(b"k") is principal
        await asyncio.sleep(1.05)
        assert cache.get(b"k") is None
        cache.listening = True  # while listening, the configured TTL holds
        cache.put(b"k", principal)
        await asyncio.sleep(1.05)
        assert cache.get(b"k") is principal
    finally:
        await listener.stop()


async def test_a_lost_listener_connection_empties_the_cache_and_reconnects(
    settings: Settings, api: Api, engine: AsyncEngine
) -> None:
    cache = KeyCache(ttl=600)
    listener = RevocationListener(settings.database_url or "", cache)
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 5)
        cache.put(b"k", Principal(programme_id=1, programme_code="p", role="crm", key_id=1))
        async with engine.begin() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'loyalty-keys' AND datname = current_database()"
                )
            )
        assert killed >= 1
        for _ in range(100):
            if cache.get(b"k") is None:
                break
            await asyncio.sleep(0.02)
        assert cache.get(b"k") is None
        for _ in range(200):  # back with backoff
            if cache.listening:
                break
            await asyncio.sleep(0.02)
        assert cache.listening
    finally:
        await listener.stop()


# --- the CLI --------------------------------------------------------------------------------


def _cli(settings: Settings, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    return cli.main(list(argv))


async def test_cli_creates_lists_and_revokes_keys(
    settings: Settings, api: Api, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = api.programme.code
    # Without --name, which is optional.
    assert (
        await asyncio.to_thread(
            _cli, settings, monkeypatch, "keys", "create", "--programme", code, "--role", "operator"
        )
        == 0
    )
    key = capsys.readouterr().out.strip()
    assert key.startswith("lk_")
    assert (
        await api.client.get("/v1/programme", headers={"Authorization": f"Bearer {key}"})
    ).status_code == 200

    assert await asyncio.to_thread(_cli, settings, monkeypatch, "keys", "list", "--programme", code) == 0
    listing = capsys.readouterr().out
    assert key[:10] in listing and f"operator {key[:10]}" in listing
    assert key not in listing
    assert len(listing.strip().splitlines()) == 1 + 5  # header, the fixture's four keys and this one

    assert await asyncio.to_thread(_cli, settings, monkeypatch, "keys", "revoke", key[:10]) == 0
    assert "revoked" in capsys.readouterr().out
    await _refused_within_a_second(api.client, key)
    assert await asyncio.to_thread(_cli, settings, monkeypatch, "keys", "list", "--programme", code) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if key[:10] in x)
    assert line.split()[6] != "-"  # the REVOKED column has a date


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("keys", "create", "--programme", "nosuch", "--role", "operator"), "error: no programme 'nosuch'"),
        (("keys", "list", "--programme", "nosuch"), "error: no programme 'nosuch'"),
        (("keys", "revoke", "lk_0000000"), "error: No API key with this id or prefix."),
        (("keys", "revoke", "nonsense"), "error: key: give a key id (digits) or its prefix (lk_...)"),
    ],
)
async def test_cli_key_errors_are_one_line(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    message: str,
) -> None:
    assert await asyncio.to_thread(_cli, settings, monkeypatch, *argv) == 1
    err = capsys.readouterr().err
    assert err.strip() == message

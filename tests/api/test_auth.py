"""Authentication (API keys, member tokens) and what each role may do."""

from __future__ import annotations

import time
from typing import Any

import pytest
from litestar import Litestar
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.auth.core import issue_member_token
from tests.api.helpers import Api, problem
from tests.conftest import TEST_SECRET_KEY
from tests.support import new_key

ROLES = ("operator", "ecommerce", "crm", "marketing")

# (method, path, body, roles allowed). Bodies name a member that does not exist, so an allowed
# call fails further on (404/422) and writes nothing; only the guard's answer matters here.
ROUTES: list[tuple[str, str, dict[str, Any] | None, set[str]]] = [
    (
        "POST",
        "/v1/earn",
        {"member_id": "ghost", "budget": "base", "points": 1},
        {"ecommerce", "marketing", "operator"},
    ),
    (
        "POST",
        "/v1/earn/batch",
        {"items": [{"member_id": "ghost", "budget": "base", "points": 1}]},
        {"ecommerce", "marketing", "operator"},
    ),
    ("POST", "/v1/spend", {"member_id": "ghost", "points": 1}, {"ecommerce", "operator"}),
    ("POST", "/v1/holds", {"member_id": "ghost", "points": 1}, {"ecommerce", "operator"}),
    ("POST", "/v1/holds/999999999/capture", {}, {"ecommerce", "operator"}),
    ("POST", "/v1/holds/999999999/void", None, {"ecommerce", "operator"}),
    ("GET", "/v1/holds/999999999", None, set(ROLES)),
    ("POST", "/v1/clawbacks", {"member_id": "ghost", "reference": "r"}, {"ecommerce", "operator"}),
    ("POST", "/v1/adjustments", {"member_id": "ghost", "points": 1, "reason": "x"}, {"operator"}),
    (
        "POST",
        "/v1/transfers",
        {"from_member_id": "ghost", "to_member_id": "ghoul", "points": 1},
        {"ecommerce", "crm", "operator"},
    ),
    ("GET", "/v1/transactions/999999999", None, set(ROLES)),
    ("GET", "/v1/transactions?reference=r", None, set(ROLES)),
    ("GET", "/v1/members/ghost/balance", None, set(ROLES)),
    ("GET", "/v1/members/ghost/expiring", None, set(ROLES)),
    ("GET", "/v1/members/ghost/transactions", None, set(ROLES)),
    ("POST", "/v1/members", {"member_id": "base"}, {"crm", "ecommerce", "operator"}),
    ("GET", "/v1/members", None, set(ROLES)),
    ("GET", "/v1/members/ghost", None, set(ROLES)),
    ("PATCH", "/v1/members/ghost", {"status": "active"}, {"crm", "ecommerce", "operator"}),
    ("POST", "/v1/member-tokens", {"member_id": "ghost"}, {"ecommerce", "crm"}),
    ("POST", "/v1/budgets", {"code": "base", "cap": 1, "unit_cost_micros": 1}, {"operator"}),
    ("GET", "/v1/budgets", None, {"operator", "marketing"}),
    ("GET", "/v1/budgets/base", None, {"operator", "marketing"}),
    ("POST", "/v1/budgets/base/top-up", {"points": 1}, {"operator"}),
    ("POST", "/v1/budgets/moves", {"from_budget": "base", "to_budget": "ghost", "points": 1}, {"operator"}),
    ("POST", "/v1/budgets/ghost/close", None, {"operator"}),
    ("GET", "/v1/reports/liability", None, {"operator"}),
    ("GET", "/v1/programme", None, set(ROLES)),
    ("PATCH", "/v1/programme", {}, {"operator"}),
]
ME_ROUTES = ["/v1/me", "/v1/me/balance", "/v1/me/expiring", "/v1/me/transactions"]


async def _call(api: Api, method: str, path: str, body: dict[str, Any] | None, authorization: str) -> Any:
    headers = {"Authorization": authorization, "Idempotency-Key": new_key()}
    if method == "GET":
        return await api.client.get(path, headers=headers)
    return await api.client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(
    ("method", "path", "body", "allowed"), ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES]
)
async def test_role_matrix(
    api: Api, method: str, path: str, body: dict[str, Any] | None, allowed: set[str]
) -> None:
    await api.budget("base")
    for role in ROLES:
        r = await _call(api, method, path, body, f"Bearer {api.programme.keys[role]}")
        if role in allowed:
            assert r.status_code not in (401, 403), f"{role} {method} {path}: {r.status_code} {r.text}"
        else:
            body_ = problem(r, 403, "role_not_allowed")
            assert body_["role"] == role and set(body_["allowed"]) == allowed
    # A member token reaches none of the staff routes.
    token = await _token(api, "tok")
    problem(await _call(api, method, path, body, f"Bearer {token}"), 403, "role_not_allowed")


async def _token(api: Api, member_id: str) -> str:
    r = await api.client.get(
        f"/v1/members/{member_id}", headers={"Authorization": f"Bearer {api.programme.keys['crm']}"}
    )
    if r.status_code == 404:
        await api.enrol(member_id)
    return str((await api.post("/v1/member-tokens", {"member_id": member_id}, role="crm")).json()["token"])


@pytest.mark.parametrize("path", ME_ROUTES)
async def test_staff_keys_cannot_read_me(api: Api, path: str) -> None:
    for role in ROLES:
        problem(await api.get(path, role=role, expect=None), 403, "role_not_allowed")


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "missing_credentials"),
        ("", "missing_credentials"),
        ("Basic dXNlcjpwYXNz", "invalid_credentials"),
        ("Bearer", "invalid_credentials"),
        ("Bearer    ", "invalid_credentials"),
        ("lk_abc", "invalid_credentials"),
        ("Bearer lk_not-a-key-that-exists", "invalid_api_key"),
        ("Bearer not.a.jwt", "invalid_token"),
    ],
)
async def test_bad_credentials_are_401(api: Api, authorization: str | None, code: str) -> None:
    await api.budget("base")
    await api.enrol("alice")
    headers = {"Idempotency-Key": new_key()}
    if authorization is not None:
        headers["Authorization"] = authorization
    for r in (
        await api.client.get("/v1/members/alice", headers=headers),
        await api.client.post(
            "/v1/earn", json={"member_id": "alice", "budget": "base", "points": 5}, headers=headers
        ),
    ):
        problem(r, 401, code)
        assert r.headers["www-authenticate"] == "Bearer"
    assert (await api.balance("alice"))["available"] == 0


async def test_scheme_is_case_insensitive(api: Api) -> None:
    r = await api.client.get(
        "/v1/programme", headers={"Authorization": f"bearer {api.programme.keys['crm']}"}
    )
    assert r.status_code == 200


async def test_revoked_key_is_401(api: Api, app: Litestar, engine: AsyncEngine) -> None:
    await api.get("/v1/programme", role="marketing")  # the key is now in the cache
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET revoked_at = now() WHERE programme_id = :p AND role = 'marketing'"),
            {"p": api.programme.id},
        )
    app.state.authenticator.cache.clear()
    problem(await api.get("/v1/programme", role="marketing", expect=None), 401, "invalid_api_key")
    # The programme's other keys still work.
    await api.get("/v1/programme", role="crm")


async def test_member_token_reads_only_me(api: Api) -> None:
    await api.budget()
    await api.member_with("alice", 40)
    token = await _token(api, "alice")
    auth = {"Authorization": f"Bearer {token}", "Idempotency-Key": new_key()}
    for path in ME_ROUTES:
        assert (await api.client.get(path, headers=auth)).status_code == 200, path
    assert (await api.client.get("/v1/me/balance", headers=auth)).json()["available"] == 40
    r = await api.client.post("/v1/spend", json={"member_id": "alice", "points": 40}, headers=auth)
    problem(r, 403, "role_not_allowed")
    problem(await api.client.get("/v1/members/alice/balance", headers=auth), 403, "role_not_allowed")
    assert (await api.balance("alice"))["available"] == 40


async def test_expired_member_token_is_401(api: Api) -> None:
    await api.enrol("alice")
    token, _ = issue_member_token(
        secret=TEST_SECRET_KEY,
        programme_id=api.programme.id,
        programme_code=api.programme.code,
        member_external_id="alice",
        ttl_seconds=60,
        now=time.time() - 3600,
    )
    r = await api.client.get("/v1/me/balance", headers={"Authorization": f"Bearer {token}"})
    problem(r, 401, "token_expired")


async def test_member_token_signed_with_another_secret_is_401(api: Api) -> None:
    await api.enrol("alice")
    token, _ = issue_member_token(
        secret="another-secret-of-the-same-length-0123456789",
        programme_id=api.programme.id,
        programme_code=api.programme.code,
        member_external_id="alice",
        ttl_seconds=600,
    )
    r = await api.client.get("/v1/me/balance", headers={"Authorization": f"Bearer {token}"})
    problem(r, 401, "invalid_token")


async def test_member_token_of_an_unknown_member_reads_nothing(api: Api) -> None:
    token, _ = issue_member_token(
        secret=TEST_SECRET_KEY,
        programme_id=api.programme.id,
        programme_code=api.programme.code,
        member_external_id="ghost",
        ttl_seconds=600,
    )
    r = await api.client.get("/v1/me/balance", headers={"Authorization": f"Bearer {token}"})
    problem(r, 404, "member_not_found")


async def test_public_paths_need_no_credentials(api: Api) -> None:
    for path in ("/health/live", "/health/ready", "/schema/openapi.json"):
        assert (await api.client.get(path)).status_code == 200, path

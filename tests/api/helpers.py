"""A thin client of the API for tests: each call asserts its status and returns the JSON."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from tests.support import Programme, new_key

if TYPE_CHECKING:
    from httpx import Response
    from litestar.testing import AsyncTestClient
    from sqlalchemy.ext.asyncio import AsyncEngine

PROBLEM = "application/problem+json"

# The `subscribe` fixture: registers a webhook endpoint for these event types (conftest.py).
Subscribe = Callable[[list[str]], Awaitable[None]]


def problem(r: Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Asserts an RFC 9457 answer with this status (and code) and returns its body."""
    assert r.status_code == status, f"{r.status_code} != {status}: {r.text}"
    assert r.headers["content-type"].startswith(PROBLEM), r.headers["content-type"]
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    if code is not None:
        assert body["code"] == code, body
    return body


def field_of(body: dict[str, Any]) -> str:
    """The field a 400 problem names: errors[0].field, else the InvalidInput's field."""
    if body.get("errors"):
        return str(body["errors"][0]["field"])
    return str(body.get("field", ""))


@dataclass
class Api:
    client: AsyncTestClient[Any]
    programme: Programme

    def headers(self, role: str = "operator", key: str | None = None) -> dict[str, str]:
        return self.programme.headers(role, key)

    async def post(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        role: str = "operator",
        key: str | None = None,
        expect: int | None = 201,
    ) -> Response:
        r = await self.client.post(path, json=body, headers=self.headers(role, key))
        if expect is not None:
            assert r.status_code == expect, f"POST {path} {body}: {r.status_code} {r.text}"
        return r

    async def get(
        self, path: str, *, role: str = "operator", params: Any = None, expect: int | None = 200
    ) -> Response:
        headers = {"Authorization": f"Bearer {self.programme.keys[role]}"}
        r = await self.client.get(path, params=params, headers=headers)
        if expect is not None:
            assert r.status_code == expect, f"GET {path}: {r.status_code} {r.text}"
        return r

    async def patch(
        self, path: str, body: dict[str, Any], *, role: str = "operator", expect: int | None = 200
    ) -> Response:
        headers = {"Authorization": f"Bearer {self.programme.keys[role]}"}
        r = await self.client.patch(path, json=body, headers=headers)
        if expect is not None:
            assert r.status_code == expect, f"PATCH {path} {body}: {r.status_code} {r.text}"
        return r

    # Shortcuts ---------------------------------------------------------------------------

    async def enrol(self, member_id: str, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"member_id": member_id}
        if attributes is not None:
            body["attributes"] = attributes
        return (await self.post("/v1/members", body, role="crm")).json()

    async def budget(
        self, code: str = "base", cap: int = 100_000, unit_cost_micros: int = 10_000, **fields: Any
    ) -> dict[str, Any]:
        body = {"code": code, "cap": cap, "unit_cost_micros": unit_cost_micros, **fields}
        return (await self.post("/v1/budgets", body)).json()

    async def earn(
        self, member_id: str, points: int, budget: str = "base", *, key: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        body = {"member_id": member_id, "budget": budget, "points": points, **fields}
        return (await self.post("/v1/earn", body, role="ecommerce", key=key)).json()

    async def spend(self, member_id: str, points: int, **fields: Any) -> dict[str, Any]:
        body = {"member_id": member_id, "points": points, **fields}
        return (await self.post("/v1/spend", body, role="ecommerce")).json()

    async def hold(self, member_id: str, points: int, **fields: Any) -> dict[str, Any]:
        body = {"member_id": member_id, "points": points, **fields}
        return (await self.post("/v1/holds", body, role="ecommerce")).json()

    async def clawback(self, member_id: str, reference: str, points: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"member_id": member_id, "reference": reference}
        if points is not None:
            body["points"] = points
        return (await self.post("/v1/clawbacks", body, role="ecommerce")).json()

    async def balance(self, member_id: str) -> dict[str, Any]:
        return (await self.get(f"/v1/members/{member_id}/balance")).json()

    async def member_with(self, member_id: str, points: int, budget: str = "base", **fields: Any) -> None:
        """Enrols a member and earns them points (the budget must exist)."""
        await self.enrol(member_id)
        await self.earn(member_id, points, budget, **fields)


async def counts(engine: AsyncEngine, programme_id: int) -> dict[str, int]:
    """Rows this programme owns in the tables a write touches: to show nothing was written."""
    tables = ("transactions", "entries", "members", "budgets", "holds", "idempotency_keys", "lots")
    sql = "SELECT " + ", ".join(f"(SELECT count(*) FROM {t} WHERE programme_id = :p) AS {t}" for t in tables)
    async with engine.connect() as conn:
        row = (await conn.execute(text(sql), {"p": programme_id})).one()
    return dict(row._mapping)


__all__ = ["PROBLEM", "Api", "counts", "field_of", "new_key", "problem"]

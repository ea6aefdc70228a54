from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, Subscribe
from tests.support import Programme, make_programme

if TYPE_CHECKING:
    from litestar.testing import AsyncTestClient


@pytest.fixture
async def programme(engine: AsyncEngine) -> Programme:
    return await make_programme(engine)


@pytest.fixture
def api(client: AsyncTestClient[Any], programme: Programme) -> Api:
    """The API as the `programme` fixture's keys see it."""
    return Api(client, programme)


@pytest.fixture
async def other(client: AsyncTestClient[Any], engine: AsyncEngine) -> Api:
    """A second, unrelated programme: for isolation tests."""
    return Api(client, await make_programme(engine))


@pytest.fixture
async def subscribe(api: Api) -> AsyncIterator[Subscribe]:
    """Registers webhook endpoints for the test and removes them (and their pending deliveries)
    after it, so that no other test's delivery run meets them."""
    created: list[int] = []

    async def register(types: list[str]) -> None:
        body = {"url": "https://crm.example/hooks", "event_types": types}
        created.append((await api.post("/v1/webhooks/endpoints", body)).json()["id"])

    yield register
    for endpoint_id in created:
        r = await api.client.delete(f"/v1/webhooks/endpoints/{endpoint_id}", headers=api.headers())
        assert r.status_code == 204, r.text

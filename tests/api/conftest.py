from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api
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

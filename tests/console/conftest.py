from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Programme, make_programme


@pytest.fixture
async def console_client(app: Litestar) -> AsyncIterator[AsyncTestClient[Any]]:
    """A client with its own cookie jar (one browser)."""
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.fixture
async def programme(engine: AsyncEngine) -> Programme:
    return await make_programme(engine)

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


@pytest.fixture(autouse=True)
async def _fresh_login_throttle(redis_url: str) -> None:
    """Every console test logs in from the test client's one address: forget the attempts of
    earlier tests, so that the per-address throttle (tested on its own) never refuses a login."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter(match="console:login:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()

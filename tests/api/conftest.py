from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support import Programme, make_programme


@pytest.fixture
async def programme(engine: AsyncEngine) -> Programme:
    return await make_programme(engine)

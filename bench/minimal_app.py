"""The HTTP reference: a Litestar endpoint doing one primary-key SELECT, built like loyalty's app
(SQLAlchemy async engine on asyncpg, a pooled connection per request). Served by granian with
the same worker count, it shows what HTTP + framework + driver cost before any ledger work.

Factory for granian: ``bench.minimal_app:app_from_env`` (reads LOYALTY_DATABASE_URL and
LOYALTY_DB_POOL_SIZE, like the real app).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, get
from sqlalchemy import text

from loyalty.db import create_engine

_SELECT = text("SELECT id, balance FROM raw_accounts WHERE id = :id")


@get("/accounts/{account_id:int}")
async def account(request: Request, account_id: int) -> dict[str, Any]:
    async with request.app.state.engine.connect() as conn:
        row = (await conn.execute(_SELECT, {"id": account_id})).first()
    return {"id": account_id, "balance": row[1] if row else None}


def create_app(database_url: str, pool_size: int) -> Litestar:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.engine = create_engine(database_url, pool_size=pool_size)
        try:
            yield
        finally:
            await app.state.engine.dispose()

    return Litestar(route_handlers=[account], lifespan=[lifespan], debug=False)


def app_from_env() -> Litestar:
    return create_app(os.environ["LOYALTY_DATABASE_URL"], int(os.environ.get("LOYALTY_DB_POOL_SIZE", "10")))

"""Run the Alembic migrations from code (`loyalty migrate`, `loyalty serve`, the test fixtures)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alembic import command
from alembic.config import Config

from loyalty.db import plain_url

# src/loyalty/migrate.py -> the repository root, where alembic.ini and migrations/ live.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"


def alembic_config(database_url: str) -> Config:
    if not ALEMBIC_INI.exists():
        raise FileNotFoundError(
            f"{ALEMBIC_INI} not found: install loyalty from its checkout (pip install -e .)"
        )
    config = Config(str(ALEMBIC_INI))
    # configparser interpolation: a literal % in a password must be doubled.
    config.set_main_option("sqlalchemy.url", plain_url(database_url).replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """`alembic upgrade head` on ``database_url``; safe to call with or without a running event loop.

    migrations/env.py calls asyncio.run(), which cannot nest in a running loop, so the command
    runs on a thread of its own.
    """
    config = alembic_config(database_url)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="alembic") as pool:
        pool.submit(command.upgrade, config, revision).result()


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, database_url, revision)

"""Run the Alembic migrations from code (`loyalty migrate`, `loyalty serve`, the test fixtures).

The migrations are found in the installed package (a wheel carries them as loyalty/_migrations)
or, in a checkout or an editable install, in migrations/ at the repository root. Either way the
Alembic configuration is built here, so no alembic.ini and no working directory is needed.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from alembic import command
from alembic.config import Config

from loyalty.db import plain_url

PACKAGE_DIR = Path(__file__).resolve().parent
# src/loyalty/migrate.py -> the repository root, where alembic.ini and migrations/ live.
PROJECT_ROOT = PACKAGE_DIR.parents[1]


def migrations_dir() -> Path:
    """Where env.py and versions/ are: inside the package first, then the checkout."""
    for candidate in (PACKAGE_DIR / "_migrations", PROJECT_ROOT / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(
        f"no migrations in {PACKAGE_DIR / '_migrations'} or {PROJECT_ROOT / 'migrations'}: "
        "reinstall loyalty from a wheel or its checkout"
    )


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
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

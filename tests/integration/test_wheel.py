"""A wheel built from the project, installed in a new virtualenv, runs `loyalty migrate` from any folder.

No download: the wheel is built without build isolation (hatchling is a dev dependency), and the
new virtualenv sees this one's site-packages through a .pth file for the dependencies, while
`loyalty` itself comes only from the wheel (the editable install's own .pth file is not read
from a folder that a .pth file adds).
"""

from __future__ import annotations

import asyncio
import os
import site
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
from alembic.script import ScriptDirectory

from loyalty import sql_files
from loyalty.db import plain_url
from loyalty.migrate import alembic_config
from tests.conftest import PROJECT_ROOT, ServerURLs
from tests.scratch import Scratch


def _run(command: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, check=True, **kwargs
    )  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a new virtualenv that has the wheel installed."""
    base = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", base / "dist", PROJECT_ROOT])  # fmt: skip
    (wheel,) = (base / "dist").glob("loyalty-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    (venv_site,) = (venv / "lib").glob("python*/site-packages")
    (venv_site / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel])
    return venv / "bin"


def test_the_wheel_carries_the_migrations_and_uses_them(installed: Path) -> None:
    where = _run(
        [
            installed / "python",
            "-c",
            "import loyalty, loyalty.migrate as m; print(loyalty.__file__); print(m.migrations_dir())",
        ],
        cwd="/",
    ).stdout.split()

    venv = installed.parent
    assert Path(where[0]).is_relative_to(venv), "loyalty must come from the wheel, not the checkout"
    assert Path(where[1]) == Path(where[0]).parent / "_migrations"
    assert (Path(where[1]) / "versions").is_dir()


async def test_an_installed_loyalty_migrates_from_any_folder(
    installed: Path, servers: ServerURLs, redis_url: str, worker_id: str, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LOYALTY_", "PYTHON"))}
    async with Scratch(servers, "wheel", worker_id).database() as url:
        env |= {
            "LOYALTY_DATABASE_URL": url,
            "LOYALTY_REDIS_URL": redis_url,
            "LOYALTY_DATA_DIR": str(tmp_path / "data"),
        }
        await asyncio.to_thread(_run, [installed / "loyalty", "migrate"], cwd=elsewhere, env=env)

        connection = await asyncpg.connect(plain_url(url))
        try:
            revision = await connection.fetchval("SELECT version_num FROM alembic_version")
            recorded = await connection.fetchval("SELECT count(*) FROM repeatable_migrations")
            earn = await connection.fetchval("SELECT to_regproc('ledger_earn') IS NOT NULL")
        finally:
            await connection.close()

    assert revision == ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert recorded == len(sql_files.FILES)
    assert earn

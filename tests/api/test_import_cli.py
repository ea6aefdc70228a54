"""`loyalty import members|points FILE`: the same service and job as the API's imports, in the
command's own process, with a summary, an error report next to the file, and a non-zero exit
when rows were refused. Run as a real subprocess against the test database."""

from __future__ import annotations

import asyncio
import csv
import os
import sys
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.ledger.verify import verify
from tests.api.helpers import Api


async def loyalty(database_url: str, tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "LOYALTY_DATABASE_URL": database_url,
        "LOYALTY_DATA_DIR": str(tmp_path / "data"),
        "LOYALTY_LOG_FORMAT": "console",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from loyalty.cli import main; sys.exit(main())",
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


async def test_import_members_command(api: Api, database_url: str, tmp_path: Path) -> None:
    rows: list[list[object]] = [[f"c-{i}", f"town-{i % 3}", "a;b"] for i in range(300)]
    rows[41] = ["", "nowhere", ""]
    path = write_csv(tmp_path / "members.csv", ["member_id", "attributes.town", "tags"], rows)
    code, out, err = await loyalty(
        database_url, tmp_path, "import", "members", str(path), "--programme", api.programme.code
    )
    assert code == 2, (out, err)
    assert "300 rows: 299 applied, 0 unchanged, 1 rejected" in out
    report = tmp_path / "members.errors.csv"
    assert f"rejected rows and their reasons: {report}" in out
    (row,) = list(csv.DictReader(report.open()))
    assert (row["line"], row["error_field"], row["error_reason"]) == ("43", "member_id", "is required")
    assert (await api.get("/v1/members/c-4")).json()["attributes"] == {"town": "town-1", "tags": ["a", "b"]}

    # Run again: idempotent, and with no refused row the exit code is 0.
    fixed = write_csv(tmp_path / "fixed.csv", ["member_id", "attributes.town", "tags"], rows[:41])
    code, out, err = await loyalty(
        database_url,
        tmp_path,
        "import",
        "members",
        str(fixed),
        "--programme",
        api.programme.code,
        "--no-progress",
    )
    assert code == 0, (out, err)
    assert "41 rows: 0 applied, 41 unchanged, 0 rejected" in out


async def test_import_points_command(
    api: Api, engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await api.budget("promo", cap=5000)
    for m in ("p-1", "p-2", "p-3"):
        await api.enrol(m)
    rows: list[list[object]] = [
        ["p-1", 1000, "r-1", "launch"],
        ["p-2", 2000, "r-2", ""],
        ["p-3", 2500, "r-3", ""],
    ]
    path = write_csv(tmp_path / "grants.csv", ["member_id", "points", "reference", "reason"], rows)
    errors = tmp_path / "out" / "refused.csv"
    errors.parent.mkdir()
    argv = ["import", "points", str(path), "--budget", "promo", "--programme", api.programme.code]
    code, out, err = await loyalty(database_url, tmp_path, *argv, "--errors", str(errors))
    assert code == 2, (out, err)
    assert "3 rows: 2 applied, 0 unchanged, 1 rejected" in out
    (row,) = list(csv.DictReader(errors.open()))
    assert (row["line"], row["error_code"], row["member_id"]) == ("4", "budget_exhausted", "p-3")
    # The same file again grants nothing twice.
    code, out, err = await loyalty(database_url, tmp_path, *argv, "--errors", str(errors))
    assert "3 rows: 0 applied, 2 unchanged, 1 rejected" in out, (out, err)
    assert (await api.balance("p-1"))["available"] == 1000
    assert (await api.balance("p-2"))["available"] == 2000
    async with engine.connect() as conn:
        assert await verify(conn, api.programme.id) == []
        job = (
            await conn.execute(
                text(
                    "SELECT status, result FROM job_runs WHERE programme_id = :p ORDER BY created_at DESC LIMIT 1"
                ),
                {"p": api.programme.id},
            )
        ).one()
    assert job.status == "succeeded" and job.result["unchanged"] == 2
    # A bad header or budget: one error line, exit code 1.
    bad = write_csv(tmp_path / "bad.csv", ["member", "points"], [["p-1", 5]])
    code, out, err = await loyalty(
        database_url,
        tmp_path,
        "import",
        "points",
        str(bad),
        "--budget",
        "promo",
        "--programme",
        api.programme.code,
    )
    assert code == 1 and "header.member" in err and "Traceback" not in err
    code, out, err = await loyalty(
        database_url,
        tmp_path,
        "import",
        "points",
        str(path),
        "--budget",
        "none",
        "--programme",
        api.programme.code,
    )
    assert code == 1 and "budget" in err.lower()

"""`loyalty import members|points FILE`: the same service and job as the API's imports, run in
this process (no HTTP, no worker), with a progress bar and a summary. The error report goes
next to the file (FILE.errors.csv) unless --errors names another path."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from sqlalchemy import select

from loyalty.db import create_engine
from loyalty.http.principal import Principal
from loyalty.imports import core, repository, service, tasks
from loyalty.imports.schemas import ImportResult
from loyalty.jobs import runs
from loyalty.programmes.models import Programme

CHUNK = 1024 * 1024
CLI_ACTOR = "cli:import"
# Exit codes: 0 every row applied or unchanged, 2 some rows rejected (1: the command failed).
EXIT_REJECTED = 2


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            yield chunk


def default_errors_path(path: Path) -> Path:
    return path.with_name(path.stem + ".errors.csv")


async def run_import_file(
    database_url: str,
    *,
    kind: core.Kind,
    path: Path,
    programme: str,
    budget: str | None = None,
    errors: Path | None = None,
    batch: int | None = None,
    show_progress: bool = True,
) -> int:
    engine = create_engine(database_url, pool_size=2)
    try:
        async with engine.connect() as conn:
            found = (
                await conn.execute(
                    select(Programme.__table__.c.id, Programme.__table__.c.timezone).where(
                        Programme.__table__.c.code == programme
                    )
                )
            ).first()
        if found is None:
            print(f"error: no programme {programme!r}", file=sys.stderr)
            return 1
        who = Principal(
            programme_id=found.id, programme_code=programme, role="operator", timezone=found.timezone
        )
        started = time.perf_counter()
        async with engine.begin() as conn:
            created = await service.create_import(
                conn, who, kind=kind, chunks=_chunks(path), budget=budget, filename=path.name, actor=CLI_ACTOR
            )
        console = Console(stderr=True)
        columns = (
            TextColumn(f"import {created.id} ({kind})"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console, disable=not show_progress) as bar:
            task = bar.add_task("rows", total=created.rows_total)

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            async with runs.recorded(
                engine, job_id=created.job_id, programme_id=who.programme_id, name=service.JOB_NAME
            ) as run:
                result = await tasks.apply_import(
                    engine, created.id, batch=batch or tasks.BATCH, progress=advance
                )
                run.result = result.as_dict()
        seconds = time.perf_counter() - started
        report = errors or default_errors_path(path)
        if result.rejected:
            async with engine.connect() as conn:
                stored = await repository.load(conn, created.id)
                rows = await repository.rejected_rows(conn, created.id)
            assert stored is not None
            report.write_bytes(service.render_errors(stored["header"], rows))
        print(_summary(path, result, seconds, report if result.rejected else None))
        return EXIT_REJECTED if result.rejected else 0
    finally:
        await engine.dispose()


def _summary(path: Path, result: ImportResult, seconds: float, report: Path | None) -> str:
    rate = result.rows_done / seconds if seconds > 0 else 0.0
    text = (
        f"{path.name}: import {result.import_id}, {result.rows_total} rows: {result.applied} applied, "
        f"{result.unchanged} unchanged, {result.rejected} rejected in {seconds:.1f} s ({rate:,.0f} rows/s)"
    )
    if report is not None:
        text += f"\nrejected rows and their reasons: {report}"
    return text

"""`loyalty export transactions`: the finance export of GET /v1/exports/transactions.csv, to a file."""

from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path
from typing import Any

from loyalty.reports import repository as repo
from loyalty.reports import service


async def run_export(
    settings: Any, programme_code: str, since: date | None, until: date | None, file: Path
) -> int:
    """Streams the period's transactions to FILE ('-' for stdout) in constant memory; a file is
    written beside its name and renamed at the end, so a failed export leaves no half file."""
    from loyalty.db import create_engine

    engine = create_engine(settings.database_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            programme_id = await repo.programme_id_by_code(conn, programme_code)
            if programme_id is None:
                print(f"error: no programme {programme_code!r}", file=sys.stderr)
                return 1
            first, last = await service.export_period(conn, programme_id, since, until)
        chunks = service.export_transactions(engine, programme_id, first, last)
        if str(file) == "-":
            async for chunk in chunks:
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return 0
        partial = file.with_name(f".{file.name}.partial")
        records = -1  # the header line
        try:
            with partial.open("wb") as out:
                async for chunk in chunks:
                    out.write(chunk)
                    records += chunk.count(b"\r\n")
            os.replace(partial, file)
        finally:
            partial.unlink(missing_ok=True)
    finally:
        await engine.dispose()
    print(
        f"wrote {records} transactions of {programme_code} from {first} to {last} to {file}", file=sys.stderr
    )
    return 0

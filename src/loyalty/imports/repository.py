"""All SQL of imports. An import's status is its job's: imports.job_id is a job_runs row."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.imports.models import Import, ImportRow

imports = cast(Table, Import.__table__)
import_rows = cast(Table, ImportRow.__table__)

_VIEW = """
    SELECT i.id, i.programme_id, i.kind, i.budget, i.filename, i.job_id, i.header, i.actor,
           i.rows_total, i.rows_done, i.applied, i.unchanged, i.rejected, i.created_at,
           coalesce(j.status, 'queued') AS status, coalesce(j.attempts, 0) AS attempts, j.error,
           j.started_at, j.finished_at
    FROM imports i LEFT JOIN job_runs j ON j.job_id = i.job_id
"""


async def create(
    conn: AsyncConnection,
    *,
    programme_id: int,
    kind: str,
    budget: str | None,
    filename: str | None,
    job_id: str,
    header: list[str],
    actor: str,
) -> int:
    return int(
        (
            await conn.execute(
                imports.insert()
                .values(
                    programme_id=programme_id,
                    kind=kind,
                    budget=budget,
                    filename=filename,
                    job_id=job_id,
                    header=header,
                    actor=actor,
                )
                .returning(imports.c.id)
            )
        ).scalar_one()
    )


async def insert_rows(conn: AsyncConnection, import_id: int, rows: Sequence[tuple[int, list[str]]]) -> None:
    if rows:
        await conn.execute(
            pg_insert(import_rows),
            [{"import_id": import_id, "line": line, "cells": cells} for line, cells in rows],
        )


async def set_total(conn: AsyncConnection, import_id: int, total: int) -> None:
    await conn.execute(imports.update().where(imports.c.id == import_id).values(rows_total=total))


async def get(conn: AsyncConnection, programme_id: int, import_id: int) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(_VIEW + " WHERE i.programme_id = :p AND i.id = :i"), {"p": programme_id, "i": import_id}
        )
    ).first()
    return None if row is None else dict(row._mapping)


async def load(conn: AsyncConnection, import_id: int) -> dict[str, Any] | None:
    """For the job, which knows only the id."""
    row = (await conn.execute(text(_VIEW + " WHERE i.id = :i"), {"i": import_id})).first()
    return None if row is None else dict(row._mapping)


async def page(
    conn: AsyncConnection, programme_id: int, before: int | None, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            _VIEW + " WHERE i.programme_id = :p AND (CAST(:before AS bigint) IS NULL OR i.id < :before)"
            " ORDER BY i.id DESC LIMIT :n"
        ),
        {"p": programme_id, "before": before, "n": limit},
    )
    return [dict(r._mapping) for r in rows]


async def next_rows(conn: AsyncConnection, import_id: int, limit: int) -> list[tuple[int, list[str]]]:
    """The next rows without an outcome, locked; a second job on the same import skips them."""
    rows = await conn.execute(
        text(
            "SELECT line, cells FROM import_rows WHERE import_id = :i AND outcome IS NULL "
            "ORDER BY line LIMIT :n FOR UPDATE SKIP LOCKED"
        ),
        {"i": import_id, "n": limit},
    )
    return [(r.line, list(r.cells)) for r in rows]


async def reject_repeated_references(conn: AsyncConnection, import_id: int, column: int) -> int:
    """A reference on more than one line of the file: the later lines are refused (the first
    is granted once, whatever else the later ones say)."""
    result = await conn.execute(
        text(
            """
            WITH firsts AS MATERIALIZED (
                SELECT btrim(cells[:c]) AS reference, min(line) AS first FROM import_rows
                WHERE import_id = :i AND coalesce(btrim(cells[:c]), '') <> ''
                GROUP BY 1 HAVING count(*) > 1
            )
            UPDATE import_rows r SET outcome = 'rejected', field = 'reference', code = 'duplicate_reference',
                   reason = 'appears on line ' || f.first || ' already'
            FROM firsts f
            WHERE r.import_id = :i AND btrim(r.cells[:c]) = f.reference AND r.line <> f.first
              AND r.outcome IS NULL
            """
        ),
        {"i": import_id, "c": column + 1},
    )
    count = result.rowcount or 0
    if count:
        await add_progress(conn, import_id, applied=0, unchanged=0, rejected=count)
    return count


async def apply_points(
    conn: AsyncConnection,
    *,
    programme_id: int,
    budget: str,
    actor: str,
    lines: list[int],
    keys: list[str],
    fingerprints: list[bytes],
    members: list[str],
    amounts: list[int],
    references: list[str],
    reasons: list[str | None],
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT line, outcome, code, detail FROM import_apply_points(:p, :b, :a, CAST(:l AS int[]), "
            "CAST(:k AS text[]), CAST(:f AS bytea[]), CAST(:m AS text[]), CAST(:n AS bigint[]), "
            "CAST(:r AS text[]), CAST(:rs AS text[]))"
        ),
        {
            "p": programme_id,
            "b": budget,
            "a": actor,
            "l": lines,
            "k": keys,
            "f": fingerprints,
            "m": members,
            "n": amounts,
            "r": references,
            "rs": reasons,
        },
    )
    return [dict(r._mapping) for r in rows]


async def apply_members(
    conn: AsyncConnection,
    *,
    programme_id: int,
    lines: list[int],
    members: list[str],
    attributes: list[str],
    statuses: list[str | None],
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT line, outcome, code, detail FROM import_apply_members(:p, CAST(:l AS int[]), "
            "CAST(:m AS text[]), CAST(:a AS jsonb[]), CAST(:s AS text[]))"
        ),
        {"p": programme_id, "l": lines, "m": members, "a": attributes, "s": statuses},
    )
    return [dict(r._mapping) for r in rows]


async def record_outcomes(
    conn: AsyncConnection,
    import_id: int,
    *,
    lines: list[int],
    outcomes: list[str],
    fields: list[str | None],
    reasons: list[str | None],
    codes: list[str | None],
) -> None:
    await conn.execute(
        text(
            """
            UPDATE import_rows r SET outcome = u.outcome, field = u.field, reason = u.reason, code = u.code
            FROM unnest(CAST(:l AS int[]), CAST(:o AS text[]), CAST(:f AS text[]), CAST(:r AS text[]),
                        CAST(:c AS text[])) AS u(line, outcome, field, reason, code)
            WHERE r.import_id = :i AND r.line = u.line
            """
        ),
        {"i": import_id, "l": lines, "o": outcomes, "f": fields, "r": reasons, "c": codes},
    )


async def add_progress(
    conn: AsyncConnection, import_id: int, *, applied: int, unchanged: int, rejected: int
) -> None:
    await conn.execute(
        imports.update()
        .where(imports.c.id == import_id)
        .values(
            rows_done=imports.c.rows_done + applied + unchanged + rejected,
            applied=imports.c.applied + applied,
            unchanged=imports.c.unchanged + unchanged,
            rejected=imports.c.rejected + rejected,
        )
    )


async def rejected_rows(conn: AsyncConnection, import_id: int) -> list[tuple[int, str, str, str, list[str]]]:
    rows = await conn.execute(
        text(
            "SELECT line, field, reason, code, cells FROM import_rows "
            "WHERE import_id = :i AND outcome = 'rejected' ORDER BY line"
        ),
        {"i": import_id},
    )
    return [(r.line, r.field or "", r.reason or "", r.code or "", list(r.cells)) for r in rows]


async def mark_queued(conn: AsyncConnection, job_id: str) -> None:
    """A resumed import waits for its job again (its job_runs row keeps its attempts)."""
    await conn.execute(
        text("UPDATE job_runs SET status = 'queued', error = NULL, finished_at = NULL WHERE job_id = :j"),
        {"j": job_id},
    )

"""Runs a file of SQL statements from src/loyalty/*/sql/ inside a migration.

The files hold PL/pgSQL functions whose bodies contain semicolons, so statements are split
where a line ends a dollar-quoted body (``$$;``) or a plain statement (``;``) outside one.
"""

from __future__ import annotations

from pathlib import Path

from alembic import op

SRC = Path(__file__).resolve().parents[1] / "src" / "loyalty"


def statements(sql: str) -> list[str]:
    out: list[str] = []
    current: list[str] = []
    in_body = False
    for line in sql.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("--")):
            continue
        current.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if not in_body and line.rstrip().endswith(";"):
            out.append("\n".join(current))
            current = []
    if current and "".join(current).strip():
        out.append("\n".join(current))
    return out


def run_sql_file(relative: str) -> None:
    for statement in statements((SRC / relative).read_text()):
        op.execute(statement)

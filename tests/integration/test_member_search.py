"""Member search stays on its indexes: EXPLAIN of the very statements the console runs, on a
programme large enough that the planner would rather scan if no index served them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from loyalty.members import repository
from loyalty.members.service import _attribute_docs
from tests.support import make_programme

MEMBERS = 30_000


@pytest.fixture
async def big(engine: AsyncEngine) -> AsyncIterator[tuple[AsyncConnection, int]]:
    """A programme with MEMBERS members, inside a transaction that is rolled back."""
    programme = await make_programme(engine)
    async with engine.connect() as conn:
        transaction = await conn.begin()
        await conn.execute(
            text(
                """
                INSERT INTO members (programme_id, external_id, account_id, attributes)
                SELECT :p, 'c' || lpad(i::text, 7, '0'), -i,
                       jsonb_build_object('email', 'user' || i || '@example.com', 'country', 'CN')
                FROM generate_series(1, :n) AS i
                """
            ),
            {"p": programme.id, "n": MEMBERS},
        )
        await conn.execute(text("ANALYZE members"))
        yield conn, programme.id
        await transaction.rollback()


async def _plan(conn: AsyncConnection, sql: str, params: dict[str, Any]) -> str:
    rows = await conn.execute(text("EXPLAIN " + sql), params)
    return "\n".join(r[0] for r in rows)


async def test_an_id_prefix_is_a_range_on_the_byte_order_index(big: tuple[AsyncConnection, int]) -> None:
    conn, programme_id = big
    sql, params = repository.search_statement(programme_id, id_prefix="c00012", limit=26)
    plan = await _plan(conn, sql, params)
    assert "ix_members_external_id_c" in plan, plan
    assert "Seq Scan" not in plan and "Sort" not in plan, plan  # the index gives the order too
    found = await repository.search(conn, programme_id, id_prefix="c00012", limit=26)
    assert [r["member_id"] for r in found][:3] == ["c0001200", "c0001201", "c0001202"]
    assert len(found) == 26
    # The next page is a keyset step on the same index.
    sql, params = repository.search_statement(programme_id, id_prefix="c00012", after="c0001225", limit=26)
    assert "ix_members_external_id_c" in await _plan(conn, sql, params)


async def test_an_attribute_is_looked_up_in_the_gin_index(big: tuple[AsyncConnection, int]) -> None:
    conn, programme_id = big
    docs = _attribute_docs("email", "user777@example.com")
    sql, params = repository.search_statement(programme_id, attribute_docs=docs, limit=26)
    plan = await _plan(conn, sql, params)
    assert "ix_members_attributes" in plan, plan
    assert "Seq Scan" not in plan, plan
    found = await repository.search(conn, programme_id, attribute_docs=docs, limit=26)
    assert [r["member_id"] for r in found] == ["c0000777"]

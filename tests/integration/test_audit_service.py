"""The audit trail's service functions as the console calls them: on a connection, with an
operator's principal; the rows commit or roll back with the change; the table is append-only."""

from __future__ import annotations

import csv
import io
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty import audit
from loyalty.audit import core, service
from loyalty.console.service import create_operator
from loyalty.http.principal import Principal
from loyalty.ledger import schemas as ledger_schemas
from loyalty.ledger import service as ledger
from loyalty.members import schemas as member_schemas
from loyalty.members import service as members
from loyalty.segments import schemas as segment_schemas
from loyalty.segments import service as segments
from tests.support import Programme, make_programme


@pytest.fixture
async def programme(engine: AsyncEngine) -> Programme:
    return await make_programme(engine)


async def console_operator(engine: AsyncEngine, programme: Programme) -> Principal:
    async with engine.begin() as conn:
        operator_id = await create_operator(
            conn,
            email=f"ann-{uuid.uuid4().hex[:8]}@example.com",
            programme_code=programme.code,
            role="support",
            password="a long enough password",
        )
    return Principal(
        programme_id=programme.id, programme_code=programme.code, role="operator", operator_id=operator_id
    )


async def test_a_console_operators_adjustment_names_the_operator(
    engine: AsyncEngine, programme: Programme
) -> None:
    ann = await console_operator(engine, programme)
    async with engine.begin() as conn:
        await ledger.create_budget(
            conn, ann, ledger_schemas.BudgetCreate(code="base", cap=1000, unit_cost_micros=0), "b-1"
        )
        await members.enrol(conn, ann, member_schemas.MemberCreate(member_id="m1"), "e-1")
        await ledger.adjust(
            conn, ann, ledger_schemas.AdjustRequest(member_id="m1", points=25, reason="phone call"), "a-1"
        )
    async with engine.connect() as conn:
        page = await service.list_entries(conn, programme.id, core.Filter(actor=ann.actor))
        created = await service.list_entries(conn, programme.id, core.Filter(action="operator.create"))
    assert [e.action for e in page.items] == ["member.adjust_points", "member.create", "budget.create"]
    adjustment = page.items[0]
    assert adjustment.actor == f"operator:{ann.operator_id}"
    assert adjustment.operator_id == ann.operator_id and adjustment.key_id is None
    assert adjustment.reason == "phone call"
    assert (adjustment.before["available"], adjustment.after["available"]) == (0, 25)
    # Creating the operator is itself in the trail, without its password.
    [op] = created.items
    assert op.actor == "cli" and op.entity_id == str(ann.operator_id)
    assert op.after == {"email": op.after["email"], "role": "support"}


async def test_a_rolled_back_change_leaves_no_row(engine: AsyncEngine, programme: Programme) -> None:
    ann = await console_operator(engine, programme)
    async with engine.connect() as conn:
        tx = await conn.begin()
        await segments.create(
            conn,
            ann,
            segment_schemas.SegmentCreate(
                code="vip", rule={"fact": "tags", "op": "contains", "value": "vip"}
            ),
        )
        # Inside the transaction the row is there, beside the change...
        inside = await service.list_entries(conn, programme.id, core.Filter(entity="segment"))
        assert [e.entity_id for e in inside.items] == ["vip"]
        await tx.rollback()
    # ...and gone with it.
    async with engine.connect() as conn:
        after = await service.list_entries(conn, programme.id, core.Filter(entity="segment"))
        assert after.items == []
        assert (await segments.list_all(conn, ann)).items == []


async def test_pages_and_csv_chunks_on_a_connection(engine: AsyncEngine, programme: Programme) -> None:
    async with engine.begin() as conn:
        for i in range(7):
            await audit.record(
                conn,
                "system",
                action="member.update",
                entity="member",
                entity_id=f"m{i}",
                before={"status": "active"},
                after={"status": "suspended", "password": "hunter2", "nested": [{"token": "t0k"}]},
                programme_id=programme.id,
            )
    async with engine.connect() as conn:
        f = core.Filter(action="member.*")
        seen: list[str | None] = []
        cursor = None
        while True:
            page = await service.list_entries(conn, programme.id, f, cursor, limit=3)
            seen += [e.entity_id for e in page.items]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert seen == [f"m{i}" for i in reversed(range(7))]
        assert page.items[0].changed == ["nested", "password", "status"]
        assert page.items[0].after["password"] == core.REDACTED
        assert page.items[0].after["nested"] == [{"token": core.REDACTED}]

    async with engine.connect() as conn, conn.begin():
        chunks = [c async for c in service.csv_chunks(conn, programme.id, f, batch=2)]
    assert len(chunks) == 1 + 4  # the header, then 7 rows in chunks of 2
    records = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert [r["entity_id"] for r in records] == seen
    assert "hunter2" not in b"".join(chunks).decode() and "t0k" not in b"".join(chunks).decode()


async def test_the_trail_is_append_only(engine: AsyncEngine, programme: Programme) -> None:
    async with engine.begin() as conn:
        await audit.record(
            conn, "system", action="programme.update", entity="programme", programme_id=programme.id
        )
    for statement in (
        "UPDATE audit_log SET reason = 'edited'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ):
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError, match="append-only"):
                await conn.execute(text(statement))


async def test_record_refuses_what_it_does_not_know(engine: AsyncEngine, programme: Programme) -> None:
    async with engine.begin() as conn:
        with pytest.raises(ValueError, match="unknown audit action"):
            await audit.record(
                conn, "system", action="member.teleport", entity="member", programme_id=programme.id
            )
        with pytest.raises(ValueError, match="programme_id"):
            await audit.record(conn, "system", action="member.update", entity="member")


async def test_a_reason_for_a_whole_unit_of_work(engine: AsyncEngine, programme: Programme) -> None:
    async with engine.begin() as conn:
        with audit.reason("ticket 4411"):
            await audit.record(
                conn, "system", action="segment.update", entity="segment", programme_id=programme.id
            )
            await audit.record(
                conn,
                "system",
                action="segment.delete",
                entity="segment",
                reason="own",
                programme_id=programme.id,
            )
        await audit.record(
            conn, "system", action="segment.create", entity="segment", programme_id=programme.id
        )
        page = await service.list_entries(conn, programme.id, core.Filter(action="segment.*"))
    assert [(e.action, e.reason) for e in page.items] == [
        ("segment.create", None),
        ("segment.delete", "own"),
        ("segment.update", "ticket 4411"),
    ]

"""A client never gets 2xx for a write whose commit failed.

A deferred constraint trigger refuses transactions whose reference is 'fail-at-commit': the
posting itself succeeds, and the failure comes only at COMMIT, after the handler returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, counts, problem
from tests.support import new_key

REFERENCE = "fail-at-commit"


@pytest.fixture
async def fail_at_commit(engine: AsyncEngine) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                f"""
                CREATE OR REPLACE FUNCTION test_fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.reference = '{REFERENCE}' THEN
                        RAISE EXCEPTION 'refused at commit (test trigger)';
                    END IF;
                    RETURN NULL;
                END $$
                """
            )
        )
        await conn.execute(
            text(
                "CREATE CONSTRAINT TRIGGER test_fail_at_commit AFTER INSERT ON transactions "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION test_fail_at_commit()"
            )
        )
    try:
        yield
    finally:
        await _drop(engine)


async def _drop(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DROP TRIGGER IF EXISTS test_fail_at_commit ON transactions"))
        await conn.execute(text("DROP FUNCTION IF EXISTS test_fail_at_commit()"))


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/earn", {"member_id": "alice", "budget": "base", "points": 30, "reference": REFERENCE}),
        ("/v1/spend", {"member_id": "alice", "points": 30, "reference": REFERENCE}),
        ("/v1/holds", {"member_id": "alice", "points": 30, "reference": REFERENCE}),
    ],
)
@pytest.mark.usefixtures("fail_at_commit")
async def test_failed_commit_is_5xx_and_a_retry_posts_once(
    api: Api, engine: AsyncEngine, path: str, body: dict[str, object]
) -> None:
    await api.budget()
    await api.member_with("alice", 100)
    before = await counts(engine, api.programme.id)
    balance = await api.balance("alice")
    key = new_key()

    r = await api.post(path, body, role="ecommerce", key=key, expect=None)
    assert r.status_code >= 500, r.text
    problem(r, r.status_code)
    assert "idempotent-replayed" not in r.headers
    assert await counts(engine, api.programme.id) == before
    assert await api.balance("alice") == balance

    await _drop(engine)
    first = await api.post(path, body, role="ecommerce", key=key)
    assert "idempotent-replayed" not in first.headers
    after = await api.balance("alice")
    assert after != balance
    again = await api.post(path, body, role="ecommerce", key=key)
    assert again.headers["idempotent-replayed"] == "true" and again.json() == first.json()
    assert await api.balance("alice") == after
    found = (await api.get("/v1/transactions", params={"reference": REFERENCE})).json()
    assert len(found) == 1


@pytest.mark.usefixtures("fail_at_commit")
async def test_other_writes_still_commit(api: Api) -> None:
    await api.budget()
    await api.member_with("alice", 100, reference="fine")
    assert (await api.balance("alice"))["available"] == 100


@pytest.mark.usefixtures("fail_at_commit")
async def test_an_event_whose_commit_fails_is_5xx_and_its_retry_records_once(
    api: Api, engine: AsyncEngine
) -> None:
    # The event's earn carries its order reference; the test trigger refuses it at COMMIT.
    await api.budget("base", cap=10_000)
    await api.enrol("alice")
    rule = {
        "code": "r",
        "event_type": "order_completed",
        "formula": {"kind": "fixed", "points": 5},
        "budget": "base",
    }
    await api.post("/v1/earning-rules", rule)
    before = await counts(engine, api.programme.id)
    event = {
        "event_id": "e-1",
        "member_id": "alice",
        "type": "order_completed",
        "order_ref": REFERENCE,
        "amount": 1000,
        "currency": "CNY",
    }
    r = await api.post("/v1/events", event, role="ecommerce", expect=None)
    assert r.status_code >= 500, r.text
    problem(r, r.status_code)
    assert await counts(engine, api.programme.id) == before
    assert (await api.balance("alice"))["available"] == 0

    await _drop(engine)
    first = await api.post("/v1/events", event, role="ecommerce")
    assert first.json()["points"] == 5 and "idempotent-replayed" not in first.headers
    again = await api.post("/v1/events", event, role="ecommerce")
    assert again.headers["idempotent-replayed"] == "true"
    assert (await api.balance("alice"))["available"] == 5

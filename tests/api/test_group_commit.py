"""Group commit through the API: concurrent writes on the fast lanes and the clawback route
share calls, and each answers as it would alone (its own status, problem JSON and replay)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from loyalty.app import create_app
from loyalty.ledger.group_commit import GroupCommitter
from loyalty.settings import Settings
from tests.api.helpers import Api, problem
from tests.integration.test_group_commit import _flushes
from tests.support import Programme


@asynccontextmanager
async def _served(settings: Settings, programme: Programme) -> AsyncIterator[Api]:
    """The app served in this test's event loop (the test client runs it in a thread of its
    own, one request at a time), so that concurrent requests really meet in the committer;
    one flusher, so that those arriving while it is busy queue and share a call."""
    app = create_app(settings)
    async with app.lifespan():
        committer = app.state.committer
        assert committer is not None, "group commit is on by default"
        app.state.committer = GroupCommitter(committer.pool, flushers=1, max_batch=committer.max_batch)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
            yield Api(client, programme)  # type: ignore[arg-type]
        await app.state.committer.close()


async def test_concurrent_earns_share_calls_and_one_refusal_stays_its_own(
    settings: Settings, programme: Programme
) -> None:
    async with _served(settings, programme) as api:
        await api.budget("b", cap=100, unit_cost_micros=1)
        names = [f"m{i}" for i in range(12)]
        for name in names:
            await api.enrol(name)
        asks = [5] * 12
        asks[3] = 500  # more than the budget has
        before = _flushes()
        answers = await asyncio.gather(
            *(
                api.post(
                    "/v1/earn", {"member_id": n, "budget": "b", "points": p}, role="ecommerce", expect=None
                )
                for n, p in zip(names, asks, strict=True)
            )
        )
        flushes, postings = (a - b for a, b in zip(_flushes(), before, strict=True))
        assert postings == 12 and flushes < 12, (flushes, postings)
        body = problem(answers[3], 422, "budget_exhausted")
        assert body["requested"] == 500
        for i, r in enumerate(answers):
            if i != 3:
                assert r.status_code == 201, r.text
                assert r.json()["amount"] == 5
        assert (await api.get("/v1/budgets/b")).json()["issued"] == 55


async def test_a_replay_and_a_conflict_in_the_same_batch(settings: Settings, programme: Programme) -> None:
    async with _served(settings, programme) as api:
        await api.budget("b", cap=1_000, unit_cost_micros=1)
        await api.enrol("ann")
        key = uuid.uuid4().hex
        body = {"member_id": "ann", "budget": "b", "points": 10}
        first, again, other = await asyncio.gather(
            api.post("/v1/earn", body, role="ecommerce", key=key, expect=None),
            api.post("/v1/earn", body, role="ecommerce", key=key, expect=None),
            api.post("/v1/earn", {**body, "points": 11}, role="ecommerce", key=key, expect=None),
        )
        statuses = sorted([first.status_code, again.status_code, other.status_code])
        assert statuses == [201, 201, 409]
        ok = [r for r in (first, again) if r.status_code == 201]
        assert sorted(r.headers.get("idempotent-replayed", "false") for r in ok) == ["false", "true"]
        assert ok[0].json() == ok[1].json()
        problem(other, 409, "idempotency_key_reused")
        assert (await api.get("/v1/members/ann/balance")).json()["available"] == 10


async def test_concurrent_clawbacks_and_voids_through_the_committer(
    settings: Settings, programme: Programme
) -> None:
    async with _served(settings, programme) as api:
        await api.budget("b", cap=10_000, unit_cost_micros=1)
        names = [f"c{i}" for i in range(6)]
        for name in names:
            await api.enrol(name)
            await api.earn(name, 100, "b", reference=f"order-{name}")
        holds = [
            (await api.post("/v1/holds", {"member_id": n, "points": 20}, role="ecommerce")).json()["hold_id"]
            for n in names
        ]
        before = _flushes()
        claws = [
            api.post(
                "/v1/clawbacks", {"member_id": n, "reference": f"order-{n}", "points": 30}, role="ecommerce"
            )
            for n in names
        ]
        voids = [api.post(f"/v1/holds/{h}/void", role="ecommerce", expect=200) for h in holds]
        answers = await asyncio.gather(*claws, *voids)
        assert _flushes()[1] - before[1] == 12
        for r in answers[:6]:
            assert r.json()["clawed_back"] == 30
        for name in names:
            balance = (await api.get(f"/v1/members/{name}/balance")).json()
            assert (balance["available"], balance["held"]) == (70, 0)

"""A queued job's outcome is visible: POST /v1/tiers/reassess answers a job id and a Location,
and GET /v1/jobs/{job_id} tells queued / running / succeeded (with its result) / failed (with a
short error). The job is run by arq's own worker machinery, on the real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.observability.metrics import observed_job
from loyalty.tiers import tasks
from tests.api.helpers import Api, problem
from tests.api.test_tiers import ladder


async def run_job(redis_url: str, engine: AsyncEngine, job_id: str) -> None:
    """Runs this one queued job as the worker would (arq's start_jobs/run_job, and the wrapper
    that every worker function gets), nothing else."""
    pool = ArqRedis.from_url(redis_url)
    worker = Worker(
        functions=[observed_job(tasks.reassess_tiers)],  # type: ignore[list-item]
        redis_pool=pool,
        queue_name=tasks.QUEUE_NAME,
        ctx={"engine": engine},
        handle_signals=False,
        burst=True,
    )
    try:
        worker.ctx["redis"] = pool
        await worker.start_jobs([job_id.encode()])
        await asyncio.gather(*worker.tasks.values())
    finally:
        await pool.aclose()


async def _publish(api: Api, definition: dict[str, Any]) -> None:
    version = (await api.post("/v1/tiers/versions", definition)).json()["version"]
    await api.post(f"/v1/tiers/versions/{version}/publish", {}, expect=200)


async def _reassess(api: Api) -> str:
    r = await api.post("/v1/tiers/reassess", {}, expect=202)
    job_id: str = r.json()["job_id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    assert r.json()["status_url"] == f"/v1/jobs/{job_id}"
    return job_id


@pytest.mark.parametrize(
    "definition",
    [
        {"tiers": [{"code": "base", "rank": 0}]},
        # Upper tiers without any threshold (entry defaults to always) and one-step demotion.
        {"tiers": [{"code": "base", "rank": 0}, {"code": "plus", "rank": 1, "downgrade_policy": "one_step"}]},
        {"tiers": [{"code": "base", "rank": 0}, {"code": "plus", "rank": 1, "validity": {"months": 1}}]},
    ],
    ids=["one-tier", "no-thresholds", "validity-only"],
)
async def test_reassess_of_small_ladders_succeeds(
    api: Api, engine: AsyncEngine, redis_url: str, definition: dict[str, Any]
) -> None:
    await api.post("/v1/members", {"member_id": "m-1"})
    await api.post("/v1/members", {"member_id": "m-2"})
    await _publish(api, definition)
    job_id = await _reassess(api)
    queued = (await api.get(f"/v1/jobs/{job_id}")).json()
    assert queued["status"] == "queued" and queued["result"] is None
    await run_job(redis_url, engine, job_id)
    done = (await api.get(f"/v1/jobs/{job_id}")).json()
    assert done["status"] == "succeeded", done
    assert done["error"] is None
    assert done["result"]["members"] == 2
    assert done["attempts"] == 1 and done["started_at"] and done["finished_at"]
    top = definition["tiers"][-1]["code"]
    assert (await api.get("/v1/members/m-1/tier")).json()["tier"] == top


async def test_a_failed_job_shows_a_short_error(
    api: Api, engine: AsyncEngine, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _publish(api, ladder())
    job_id = await _reassess(api)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("slice 1 failed\nsecond line of detail")

    monkeypatch.setattr(tasks, "reassess_programme", broken)
    await run_job(redis_url, engine, job_id)
    failed = (await api.get(f"/v1/jobs/{job_id}")).json()
    assert failed["status"] == "failed"
    assert failed["error"] == "RuntimeError: slice 1 failed"
    assert failed["result"] is None and failed["finished_at"]


async def test_jobs_are_scoped_to_their_programme(api: Api, other: Api) -> None:
    job_id = await _reassess(api)
    problem(await other.get(f"/v1/jobs/{job_id}", expect=None), 404, "not_found")
    problem(await api.get("/v1/jobs/tiers-reassess:0:nope", expect=None), 404, "not_found")
    await api.get(f"/v1/jobs/{job_id}", role="ecommerce", expect=403)


async def test_runs_that_redis_lost_are_queued_again_or_shown_failed(
    api: Api, engine: AsyncEngine, redis_url: str
) -> None:
    """Redis loses its data between a job being queued and run (a failover, a restart without
    persistence): the run's record says queued, and arq holds nothing. The sweep queues a
    re-assessment again under its own id, which then runs once; a job it cannot rebuild (a rule
    replay, whose draft lived only in the queue) is marked failed, saying why."""
    from datetime import timedelta

    from sqlalchemy import text

    from loyalty import worker
    from loyalty.jobs import lost

    # Runs that earlier tests of this database left queued are swept first: the counts below
    # are this test's own.
    pool = ArqRedis.from_url(redis_url)
    try:
        await lost.recover_lost_jobs(engine, pool, worker.REQUEUE, older_than=timedelta(0))
    finally:
        await pool.aclose()
    await _publish(api, {"tiers": [{"code": "base", "rank": 0}]})
    job_id = await _reassess(api)
    replay_id = f"replay:{api.programme.id}:lost-{job_id[-6:]}"
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO job_runs (job_id, programme_id, name, status) "
                "VALUES (:j, :p, 'replay_earning_rules', 'queued')"
            ),
            {"j": replay_id, "p": api.programme.id},
        )
    pool = ArqRedis.from_url(redis_url)
    try:
        # Both runs are young: the sweep leaves them alone even though arq lost one of them.
        await pool.delete(f"arq:job:{job_id}")
        assert await lost.recover_lost_jobs(engine, pool, worker.REQUEUE) == {"requeued": 0, "failed": 0}
        counts = await lost.recover_lost_jobs(engine, pool, worker.REQUEUE, older_than=timedelta(0))
        assert counts == {"requeued": 1, "failed": 1}
        assert await pool.exists(f"arq:job:{job_id}")
        # Once queued again, the run is arq's: a second sweep changes nothing.
        counts = await lost.recover_lost_jobs(engine, pool, worker.REQUEUE, older_than=timedelta(0))
        assert counts == {"requeued": 0, "failed": 0}
    finally:
        await pool.aclose()
    failed = (await api.get(f"/v1/jobs/{replay_id}")).json()
    assert failed["status"] == "failed" and "start it again" in failed["error"]
    await run_job(redis_url, engine, job_id)
    done = (await api.get(f"/v1/jobs/{job_id}")).json()
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 1

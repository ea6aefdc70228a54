"""The operator's full tier re-evaluation over HTTP: queued as an arq job (202), never run in the
request; publish queues one when asked, after its transaction committed."""

from __future__ import annotations

from typing import Any

import redis.asyncio

from loyalty.tiers import tasks
from tests.api.helpers import Api
from tests.api.test_tiers import ladder


async def _queued(redis_url: str) -> list[str]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        return [member.decode() for member in await client.zrange(tasks.QUEUE_NAME, 0, -1)]
    finally:
        await client.aclose()


async def test_reassess_is_queued_for_the_worker(api: Api, redis_url: str) -> None:
    answer = (await api.post("/v1/tiers/reassess", {}, expect=202)).json()
    assert answer["status"] == "queued"
    assert answer["job_id"].startswith(f"tiers-reassess:{api.programme.id}:")
    assert answer["job_id"] in await _queued(redis_url)


async def test_only_operators_may_reassess(api: Api) -> None:
    await api.post("/v1/tiers/reassess", {}, role="ecommerce", expect=403)


async def test_publish_queues_a_reassessment_only_when_asked(api: Api, redis_url: str) -> None:
    before = set(await _queued(redis_url))
    first: Any = (await api.post("/v1/tiers/versions", ladder())).json()
    await api.post(f"/v1/tiers/versions/{first['version']}/publish", {}, expect=200)
    assert set(await _queued(redis_url)) == before
    second: Any = (await api.post("/v1/tiers/versions", ladder())).json()
    await api.post(f"/v1/tiers/versions/{second['version']}/publish", {"reassess": True}, expect=200)
    new = set(await _queued(redis_url)) - before
    assert [job.split(":")[1] for job in new] == [str(api.programme.id)]

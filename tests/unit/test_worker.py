"""The worker's settings build into an arq Worker: every job and cron job is known to it."""

from __future__ import annotations

import dataclasses

from arq.worker import Worker

from loyalty.settings import Settings
from loyalty.worker import build_worker_settings


def test_every_cron_job_is_a_registered_function() -> None:
    settings = dataclasses.replace(
        Settings.from_env(), database_url="postgresql://db/loyalty", redis_url="redis://localhost/0"
    )
    built = build_worker_settings(settings)
    worker = Worker(
        functions=built["functions"], cron_jobs=built["cron_jobs"], redis_settings=built["redis_settings"]
    )
    names = {getattr(f, "__name__", "") for f in built["functions"]}
    crons = {job.coroutine.__name__ for job in built["cron_jobs"]}
    assert crons <= names, crons - names
    for expected in (
        "expire_holds",
        "assess_due_tiers",
        "deliver_webhooks",
        "purge_webhook_history",
        "announce_benefit_campaigns",
    ):
        assert expected in crons
    # arq registers each cron job beside the plain functions, as "cron:<name>".
    assert set(worker.functions) == names | {f"cron:{name}" for name in crons}

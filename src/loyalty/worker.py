"""The arq worker: every domain's jobs and cron schedules, on the configured Redis."""

from __future__ import annotations

from typing import Any

from arq import cron
from arq.connections import RedisSettings
from arq.worker import run_worker as arq_run_worker

from loyalty.activity import tasks as activity_tasks
from loyalty.benefits import tasks as benefit_tasks
from loyalty.db import create_engine
from loyalty.ledger import tasks as ledger_tasks
from loyalty.observability import wiring as observability
from loyalty.settings import Settings
from loyalty.tiers import tasks as tier_tasks
from loyalty.webhooks import tasks as webhook_tasks

EVERY_10_SECONDS = set(range(0, 60, 10))
EVERY_5_SECONDS = set(range(0, 60, 5))


def build_worker_settings(settings: Settings) -> dict[str, Any]:
    async def startup(ctx: dict[str, Any]) -> None:
        ctx["settings"] = settings
        ctx["engine"] = create_engine(settings.database_url or "", pool_size=4)

    async def shutdown(ctx: dict[str, Any]) -> None:
        await ctx["engine"].dispose()

    worker = {
        "functions": [
            ledger_tasks.expire_holds,
            ledger_tasks.vest_points,
            ledger_tasks.expire_points,
            ledger_tasks.budget_alerts,
            ledger_tasks.purge_idempotency_keys,
            webhook_tasks.purge_webhook_history,
            activity_tasks.refresh_member_facts,
            tier_tasks.assess_due_tiers,
            tier_tasks.reassess_tiers,
            webhook_tasks.deliver_webhooks,
            webhook_tasks.notify_expiring_soon,
            benefit_tasks.release_expired_reservations,
            benefit_tasks.pay_benefit_gifts,
            benefit_tasks.announce_benefit_campaigns,
        ],
        "cron_jobs": [
            cron(ledger_tasks.expire_holds, second=EVERY_10_SECONDS, unique=True, run_at_startup=True),
            cron(ledger_tasks.vest_points, second={5, 35}, unique=True, run_at_startup=True),
            cron(ledger_tasks.expire_points, second={15, 45}, unique=True, run_at_startup=True),
            cron(ledger_tasks.budget_alerts, second={25, 55}, unique=True, run_at_startup=True),
            cron(ledger_tasks.purge_idempotency_keys, hour={3}, minute={17}, second={0}, unique=True),
            cron(webhook_tasks.purge_webhook_history, hour={3}, minute={37}, second={0}, unique=True),
            cron(activity_tasks.refresh_member_facts, hour={2}, minute={7}, second={0}, unique=True),
            cron(
                tier_tasks.assess_due_tiers,
                minute=set(range(3, 60, 5)),
                second={0},
                unique=True,
                run_at_startup=True,
            ),
            # Deliveries are rows in PostgreSQL: with Redis or the worker down they wait, then catch up.
            cron(webhook_tasks.deliver_webhooks, second=EVERY_5_SECONDS, unique=True, run_at_startup=True),
            cron(webhook_tasks.notify_expiring_soon, hour={6}, minute={11}, second={0}, unique=True),
            cron(
                benefit_tasks.release_expired_reservations,
                second=EVERY_10_SECONDS,
                unique=True,
                run_at_startup=True,
            ),
            # Birthdays in every programme's time zone: hourly, idempotent by ledger key.
            cron(benefit_tasks.pay_benefit_gifts, minute={23}, second={0}, unique=True),
            # Campaigns that started: their members are told within a minute.
            cron(benefit_tasks.announce_benefit_campaigns, second={50}, unique=True, run_at_startup=True),
        ],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "redis_settings": RedisSettings.from_dsn(settings.redis_url or "redis://localhost"),
        "queue_name": "loyalty:queue",
        "max_jobs": 10,
        "job_timeout": 300,
        "handle_signals": True,
    }
    return observability.instrument_worker(worker, settings)


def run_worker(settings: Settings) -> None:
    # JSON lines by default; arq's cron chatter is quieted there (the jobs log what they changed).
    observability.configure_process_logging(settings, default_format="json")
    observability.serve_worker_metrics(settings)
    arq_run_worker(build_worker_settings(settings))

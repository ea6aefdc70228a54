"""Tier benchmarks: the programme set-up the `events` workload needs, and `tier-reeval`, a full
re-evaluation of a million members timed end to end."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from bench.workloads import Target
from loyalty.db import create_engine

REEVAL_MEMBERS = 1_000_000
REEVAL_TARGET_S = 60.0


def _qp(at_least: int) -> dict[str, Any]:
    return {"fact": "qualifying_points", "op": ">=", "value": at_least}


# Three tiers over the facts that order events move; plat also looks at recency.
LADDER: dict[str, Any] = {
    "note": "bench ladder",
    "tiers": [
        {"code": "bronze", "rank": 0},
        {
            "code": "silver",
            "rank": 1,
            "entry": {"any": [_qp(1_000), {"fact": "orders", "op": ">=", "value": 10}]},
            "retention": _qp(500),
            "validity": {"months": 12},
            "grace_days": 30,
        },
        {
            "code": "gold",
            "rank": 2,
            "entry": {"all": [_qp(5_000), {"fact": "spend", "op": ">=", "value": 200_000}]},
            "retention": _qp(3_000),
            "validity": {"months": 12, "round_to": "month"},
            "downgrade_policy": "to_qualified",
        },
        {
            "code": "plat",
            "rank": 3,
            "entry": {"all": [_qp(15_000), {"fact": "recency_days", "op": "<=", "value": 90}]},
            "retention": _qp(10_000),
            "validity": {"months": 12, "round_to": "year"},
            "downgrade_policy": "to_qualified",
            "grace_days": 14,
        },
    ],
}

# Earning rules of the events workload: a base rate, a bonus for larger baskets and one whose
# condition reads the member's facts (repeat customers earn extra).
EARNING_RULES: list[dict[str, Any]] = [
    {
        "code": "base",
        "event_type": "order_completed",
        "formula": {"kind": "per_unit", "points": 1, "per": 100},
        "budget": "b1",
    },
    {
        "code": "big-basket",
        "event_type": "order_completed",
        "event_filter": {"min_amount": 20_000},
        "formula": {"kind": "per_unit", "points": 1, "per": 200},
        "budget": "b2",
    },
    {
        "code": "repeat",
        "event_type": "order_completed",
        "condition": {"fact": "orders", "op": ">=", "value": 3},
        "formula": {"kind": "per_unit", "points": 1, "per": 500},
        "budget": "b3",
    },
]


def _post(target: Target, path: str, body: dict[str, Any], key: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://{target.host}:{target.port}{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {target.api_key}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def prepare_events(target: Target) -> None:
    """Earning rules and a published ladder, through the API with the operator's key."""
    for index, rule in enumerate(EARNING_RULES):
        status, body = _post(target, "/v1/earning-rules", rule, f"bench-rule-{index}")
        if status >= 300 and status != 409:
            raise RuntimeError(f"earning rule {rule['code']}: {status} {body[:300]}")
    status, body = _post(target, "/v1/tiers/versions", LADDER, "bench-ladder")
    if status >= 300:
        raise RuntimeError(f"ladder: {status} {body[:300]}")
    version = json.loads(body)["version"]
    status, body = _post(target, f"/v1/tiers/versions/{version}/publish", {}, "bench-publish")
    if status >= 300:
        raise RuntimeError(f"publish: {status} {body[:300]}")


async def prepare_events_async(target: Target) -> None:
    await asyncio.to_thread(prepare_events, target)


# --- tier-reeval ---------------------------------------------------------------------------------


@dataclass
class ReevalResult:
    members: int
    changed: int
    seconds: float
    seed_seconds: float
    by_tier: dict[str, int]

    @property
    def members_per_s(self) -> float:
        return self.members / self.seconds if self.seconds else 0.0


async def seed_reeval(url: str, members: int) -> int:
    """A programme of ``members`` members with varied facts, set-based: an account, its balance
    row and the member row as ledger_open_member writes them, and a member_facts row each."""
    from loyalty.programmes.service import create_programme

    engine = create_engine(url, pool_size=1)
    try:
        async with engine.begin() as conn:
            programme_id = await create_programme(conn, code="reeval", name="tier re-evaluation")
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                "WITH acc AS (INSERT INTO accounts (programme_id, kind, shards) "
                "  SELECT $1, 'member', 1 FROM generate_series(1, $2::int) RETURNING id), "
                "bal AS (INSERT INTO account_balances (programme_id, account_id, shard) SELECT $1, id, 0 FROM acc) "
                "INSERT INTO members (programme_id, external_id, account_id) "
                "SELECT $1, 'r' || row_number() OVER (ORDER BY id), id FROM acc",
                programme_id,
                members,
            )
            # Deterministic spread: a quarter or so of members per tier, recency 0..400 days.
            await conn.execute(
                "INSERT INTO member_facts (programme_id, member_id, qualifying_points, spend, orders, "
                "  lifetime_points, lifetime_spend, lifetime_orders, last_order_at) "
                "SELECT $1, id, q, s, o, q, s, o, now() - make_interval(days => (id * 31 % 400)::int) "
                "FROM (SELECT id, (id * 7919 % 10007) * 2 AS q, id * 104729 % 400003 AS s, "
                "  (id * 13 % 40)::int AS o FROM members WHERE programme_id = $1) m",
                programme_id,
            )
        await conn.execute("VACUUM ANALYZE members, member_facts, member_tiers, accounts, account_balances")
    finally:
        await conn.close()
    return programme_id


async def publish_ladder(url: str, programme_id: int) -> None:
    import msgspec

    from loyalty.http.principal import Principal
    from loyalty.tiers import schemas, service

    engine = create_engine(url, pool_size=1)
    try:
        who = Principal(programme_id=programme_id, programme_code="reeval", role="operator", key_id=0)
        async with engine.begin() as conn:
            created = await service.create_version(conn, who, msgspec.convert(LADDER, schemas.LadderCreate))
            await service.publish(conn, who, created.version, schemas.PublishRequest())
    finally:
        await engine.dispose()


async def run_reeval(url: str, members: int) -> ReevalResult:
    from loyalty.tiers import tasks

    started = time.perf_counter()
    programme_id = await seed_reeval(url, members)
    await publish_ladder(url, programme_id)
    seeded = time.perf_counter() - started
    engine = create_engine(url, pool_size=tasks.REASSESS_CONCURRENCY + 1)
    try:
        result = await tasks.reassess_programme(engine, programme_id=programme_id, now=datetime.now(UTC))
    finally:
        await engine.dispose()
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tier, count(*) AS n FROM member_tiers WHERE programme_id = $1 GROUP BY tier ORDER BY tier",
            programme_id,
        )
    finally:
        await conn.close()
    return ReevalResult(
        members=result.members,
        changed=result.changed,
        seconds=result.seconds,
        seed_seconds=seeded,
        by_tier={r["tier"]: int(r["n"]) for r in rows},
    )

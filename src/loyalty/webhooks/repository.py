"""All SQL of webhooks: endpoints, the delivery log, the worker's claim and its outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import distribution

_ENDPOINT = "id, url, description, event_types, active, created_at, disabled_at"
_DELIVERY = (
    "d.id, d.endpoint_id, d.event_id, d.event_type, d.subject, d.status, d.attempts, d.next_attempt_at, "
    "d.last_status_code, d.last_error, d.last_attempt_at, d.succeeded_at, d.created_at"
)


# On Citus the outbox is distributed by member (migration 0023): a delivery and its event sit on
# the member's shard, and the worker's SQL names that shard (a multi-shard query may not lock
# with FOR UPDATE, and a ctid means nothing across shards).
_on_citus = distribution.on_citus


def _row(result: Any) -> dict[str, Any] | None:
    row = result.first()
    return dict(row._mapping) if row else None


# Endpoints ---------------------------------------------------------------------------------


async def create_endpoint(
    conn: AsyncConnection,
    programme_id: int,
    *,
    url: str,
    description: str,
    event_types: list[str],
    secret: str,
) -> dict[str, Any]:
    result = await conn.execute(
        text(
            "INSERT INTO webhook_endpoints (programme_id, url, description, event_types, secret) "
            f"VALUES (:p, :url, :d, :types, :secret) RETURNING {_ENDPOINT}"
        ),
        {"p": programme_id, "url": url, "d": description, "types": event_types, "secret": secret},
    )
    row = _row(result)
    assert row is not None
    return row


async def get_endpoint(conn: AsyncConnection, programme_id: int, endpoint_id: int) -> dict[str, Any] | None:
    return _row(
        await conn.execute(
            text(f"SELECT {_ENDPOINT}, secret FROM webhook_endpoints WHERE programme_id = :p AND id = :id"),
            {"p": programme_id, "id": endpoint_id},
        )
    )


async def list_endpoints(conn: AsyncConnection, programme_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(f"SELECT {_ENDPOINT} FROM webhook_endpoints WHERE programme_id = :p ORDER BY id"),
        {"p": programme_id},
    )
    return [dict(r._mapping) for r in rows]


async def update_endpoint(
    conn: AsyncConnection,
    programme_id: int,
    endpoint_id: int,
    *,
    url: str | None,
    description: str | None,
    event_types: list[str] | None,
    active: bool | None,
) -> dict[str, Any] | None:
    # The transaction's now(), read first: Citus refuses now() inside the CASE of an UPDATE of a
    # reference table.
    now = (await conn.execute(text("SELECT now()"))).scalar_one()
    return _row(
        await conn.execute(
            text(
                f"""
                UPDATE webhook_endpoints SET
                    url = coalesce(CAST(:url AS text), url),
                    description = coalesce(CAST(:d AS text), description),
                    event_types = coalesce(CAST(:types AS text[]), event_types),
                    disabled_at = CASE WHEN CAST(:active AS boolean) IS NULL
                                         OR CAST(:active AS boolean) = active THEN disabled_at
                                       WHEN CAST(:active AS boolean) THEN NULL ELSE CAST(:now AS timestamptz) END,
                    active = coalesce(CAST(:active AS boolean), active)
                WHERE programme_id = :p AND id = :id
                RETURNING {_ENDPOINT}
                """
            ),
            {
                "p": programme_id,
                "id": endpoint_id,
                "url": url,
                "d": description,
                "types": event_types,
                "active": active,
                "now": now,
            },
        )
    )


async def rotate_secret(
    conn: AsyncConnection, programme_id: int, endpoint_id: int, secret: str
) -> dict[str, Any] | None:
    return _row(
        await conn.execute(
            text(
                "UPDATE webhook_endpoints SET secret = :secret WHERE programme_id = :p AND id = :id "
                f"RETURNING {_ENDPOINT}, secret"
            ),
            {"p": programme_id, "id": endpoint_id, "secret": secret},
        )
    )


async def delete_endpoint(conn: AsyncConnection, programme_id: int, endpoint_id: int) -> bool:
    """Removes the endpoint and its delivery log (to pause instead, set active to false)."""
    await conn.execute(
        text("DELETE FROM webhook_deliveries WHERE programme_id = :p AND endpoint_id = :id"),
        {"p": programme_id, "id": endpoint_id},
    )
    result = await conn.execute(
        text("DELETE FROM webhook_endpoints WHERE programme_id = :p AND id = :id RETURNING id"),
        {"p": programme_id, "id": endpoint_id},
    )
    return result.first() is not None


# The delivery log ---------------------------------------------------------------------------


async def page_deliveries(
    conn: AsyncConnection,
    programme_id: int,
    *,
    endpoint_id: int | None,
    status: str | None,
    before_id: int | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Newest first; `before_id` is the cursor."""
    rows = await conn.execute(
        text(
            f"""
            SELECT {_DELIVERY} FROM webhook_deliveries d
            WHERE d.programme_id = :p
              AND (CAST(:e AS bigint) IS NULL OR d.endpoint_id = :e)
              AND (CAST(:s AS text) IS NULL OR d.status = :s)
              AND (CAST(:before AS bigint) IS NULL OR d.id < :before)
            ORDER BY d.id DESC LIMIT :n
            """
        ),
        {"p": programme_id, "e": endpoint_id, "s": status, "before": before_id, "n": limit},
    )
    return [dict(r._mapping) for r in rows]


async def get_delivery(conn: AsyncConnection, programme_id: int, delivery_id: int) -> dict[str, Any] | None:
    return _row(
        await conn.execute(
            text(f"SELECT {_DELIVERY} FROM webhook_deliveries d WHERE d.programme_id = :p AND d.id = :id"),
            {"p": programme_id, "id": delivery_id},
        )
    )


async def redeliver(conn: AsyncConnection, programme_id: int, delivery_id: int) -> dict[str, Any] | None:
    """Queues the delivery again with a fresh retry budget, whatever its status."""
    return _row(
        await conn.execute(
            text(
                f"""
                UPDATE webhook_deliveries d SET status = 'pending', attempts = 0, next_attempt_at = now(),
                    lease_until = NULL, succeeded_at = NULL
                WHERE d.programme_id = :p AND d.id = :id
                RETURNING {_DELIVERY}
                """
            ),
            {"p": programme_id, "id": delivery_id},
        )
    )


# The worker --------------------------------------------------------------------------------


async def claim_due(conn: AsyncConnection, *, limit: int, lease_seconds: int) -> list[dict[str, Any]]:
    """Leases up to `limit` due deliveries, several workers at once (SKIP LOCKED).

    A delivery waits while an earlier one of the same endpoint and subject is still open
    (pending or failed), so a member's events arrive in order; a dead one no longer blocks.
    The attempt is counted now, so a worker that dies mid-send still used up an attempt.
    """
    if await _on_citus(conn):
        return await _claim_due_citus(conn, limit=limit, lease_seconds=lease_seconds)
    rows = await conn.execute(
        text(
            """
            WITH due AS (
                SELECT d.programme_id, d.id FROM webhook_deliveries d
                JOIN webhook_endpoints ep
                  ON ep.programme_id = d.programme_id AND ep.id = d.endpoint_id AND ep.active
                WHERE d.status IN ('pending', 'failed') AND d.next_attempt_at <= now()
                  AND (d.lease_until IS NULL OR d.lease_until < now())
                  AND NOT EXISTS (
                      SELECT 1 FROM webhook_deliveries e
                      WHERE e.programme_id = d.programme_id AND e.endpoint_id = d.endpoint_id
                        AND e.subject = d.subject AND e.event_id < d.event_id
                        AND e.status IN ('pending', 'failed'))
                ORDER BY d.next_attempt_at, d.id
                LIMIT :n
                FOR UPDATE OF d SKIP LOCKED
            )
            UPDATE webhook_deliveries d
            SET attempts = d.attempts + 1, lease_until = now() + make_interval(secs => :lease),
                last_attempt_at = now()
            FROM due, webhook_endpoints ep, domain_events ev
            WHERE d.programme_id = due.programme_id AND d.id = due.id
              AND ep.programme_id = d.programme_id AND ep.id = d.endpoint_id
              AND ev.programme_id = d.programme_id AND ev.id = d.event_id
            RETURNING d.programme_id, d.id, d.attempts, d.event_id, ep.url, ep.secret,
                      ev.type, ev.payload, ev.created_at
            """
        ),
        {"n": limit, "lease": lease_seconds},
    )
    return [dict(r._mapping) for r in rows]


async def _claim_due_citus(conn: AsyncConnection, *, limit: int, lease_seconds: int) -> list[dict[str, Any]]:
    """The claim on Citus: no FOR UPDATE over many shards, so the lease itself is the lock.

    The due deliveries are chosen without locks (bounded by the LIMIT), then one UPDATE leases
    them, and its WHERE asks again that each is open and not leased. Two workers that chose the
    same delivery meet at its row lock: the second re-reads the row after the first commits,
    finds the lease, and skips it; so a delivery is never leased twice, and one whose lease ran
    out is claimable again (at-least-once). The order check is per member's shard: a subject's
    deliveries have the member of their events. Each node draws ids from its own range (a
    member's events come from its worker, or from the coordinator for a call that ran there),
    so events are ordered by their transaction's time first (a delivery is written in its
    event's transaction: same created_at), then by id.
    """
    rows = await conn.execute(
        text(
            """
            WITH due AS (
                SELECT d.programme_id, d.id, d.member_id FROM webhook_deliveries d
                JOIN webhook_endpoints ep
                  ON ep.programme_id = d.programme_id AND ep.id = d.endpoint_id AND ep.active
                WHERE d.status IN ('pending', 'failed') AND d.next_attempt_at <= now()
                  AND (d.lease_until IS NULL OR d.lease_until < now())
                  AND NOT EXISTS (
                      SELECT 1 FROM webhook_deliveries e
                      WHERE e.member_id = d.member_id
                        AND e.programme_id = d.programme_id AND e.endpoint_id = d.endpoint_id
                        AND e.subject = d.subject
                        AND (e.created_at, e.event_id) < (d.created_at, d.event_id)
                        AND e.status IN ('pending', 'failed'))
                ORDER BY d.next_attempt_at, d.id
                LIMIT :n
            )
            UPDATE webhook_deliveries d
            SET attempts = d.attempts + 1, lease_until = now() + make_interval(secs => :lease),
                last_attempt_at = now()
            FROM due, webhook_endpoints ep, domain_events ev
            WHERE d.member_id = due.member_id AND d.programme_id = due.programme_id AND d.id = due.id
              AND d.status IN ('pending', 'failed') AND (d.lease_until IS NULL OR d.lease_until < now())
              AND ep.programme_id = d.programme_id AND ep.id = d.endpoint_id
              AND ev.member_id = d.member_id AND ev.programme_id = d.programme_id AND ev.id = d.event_id
            RETURNING d.programme_id, d.id, d.member_id, d.attempts, d.event_id, ep.url, ep.secret,
                      ev.type, ev.payload, ev.created_at
            """
        ),
        {"n": limit, "lease": lease_seconds},
    )
    return [dict(r._mapping) for r in rows]


async def record_outcome(
    conn: AsyncConnection,
    *,
    programme_id: int,
    delivery_id: int,
    attempts: int,
    status: str,
    status_code: int | None,
    error: str | None,
    next_attempt_at: datetime | None,
    member_id: int | None = None,
) -> bool:
    """Writes an attempt's outcome, only if the lease is still ours (`attempts` unchanged): a
    worker that outlived its lease must not overwrite the newer attempt."""
    result = await conn.execute(
        text(
            """
            UPDATE webhook_deliveries SET status = :status, last_status_code = :code, last_error = :error,
                next_attempt_at = coalesce(:next, next_attempt_at), lease_until = NULL,
                succeeded_at = {succeeded_at}
            WHERE programme_id = :p AND id = :id AND attempts = :attempts
              AND status IN ('pending', 'failed'){shard}
            RETURNING id
            """.format(
                # Chosen here, not in a CASE: Citus allows no now() inside one.
                succeeded_at="now()" if status == "succeeded" else "succeeded_at",
                shard=" AND member_id = :m" if member_id is not None else "",
            )
        ),
        {
            "p": programme_id,
            "id": delivery_id,
            "attempts": attempts,
            "status": status,
            "code": status_code,
            "error": error,
            "next": next_attempt_at,
            "m": member_id,
        },
    )
    return result.first() is not None


# points.expiring_soon -----------------------------------------------------------------------


async def get_settings(conn: AsyncConnection, programme_id: int) -> dict[str, Any]:
    row = _row(
        await conn.execute(
            text("SELECT expiring_soon_days FROM webhook_settings WHERE programme_id = :p"),
            {"p": programme_id},
        )
    )
    return row or {"expiring_soon_days": None}


async def put_settings(conn: AsyncConnection, programme_id: int, expiring_soon_days: int | None) -> None:
    await conn.execute(
        text(
            "INSERT INTO webhook_settings (programme_id, expiring_soon_days) VALUES (:p, :d) "
            # excluded.updated_at is the column's default, now(): Citus allows no now() in DO UPDATE.
            "ON CONFLICT (programme_id) DO UPDATE SET expiring_soon_days = excluded.expiring_soon_days, "
            "updated_at = excluded.updated_at"
        ),
        {"p": programme_id, "d": expiring_soon_days},
    )


async def notify_expiring_lots(conn: AsyncConnection, batch: int) -> int:
    """One points.expiring_soon event per member for lots that expire within the programme's
    notice period and were not announced before; returns how many lots were announced.

    The notice rows are inserted first with ON CONFLICT DO NOTHING, and only lots this
    statement really noted make events, so two workers at once cannot announce a lot twice.
    On Citus the event is written on its member's shard.
    """
    citus = await _on_citus(conn)
    owner = {"owner": "member_id, " if citus else "", "owner_value": "pm.member_id, " if citus else ""}
    result = await conn.execute(
        text(
            """
            WITH due AS (
                SELECT l.programme_id, l.member_id, l.id, l.remaining, l.expires_at
                FROM webhook_settings s
                JOIN lots l ON l.programme_id = s.programme_id
                WHERE s.expiring_soon_days IS NOT NULL AND l.remaining > 0
                  AND l.expires_at > now()
                  AND l.expires_at <= now() + make_interval(days => s.expiring_soon_days)
                  AND NOT EXISTS (
                      SELECT 1 FROM webhook_lot_notices n
                      WHERE n.programme_id = l.programme_id AND n.member_id = l.member_id AND n.lot_id = l.id)
                ORDER BY l.programme_id, l.member_id, l.id
                LIMIT :n
            ), noted AS (
                INSERT INTO webhook_lot_notices (programme_id, member_id, lot_id)
                SELECT programme_id, member_id, id FROM due
                ON CONFLICT DO NOTHING
                RETURNING programme_id, member_id, lot_id
            ), per_member AS (
                SELECT d.programme_id, d.member_id, sum(d.remaining) AS points, min(d.expires_at) AS first_at,
                       jsonb_agg(jsonb_build_object('lot_id', d.id, 'points', d.remaining,
                                                    'expires_at', d.expires_at) ORDER BY d.expires_at, d.id) AS lots
                FROM due d
                JOIN noted n ON n.programme_id = d.programme_id AND n.member_id = d.member_id AND n.lot_id = d.id
                GROUP BY d.programme_id, d.member_id
            ), events AS (
                INSERT INTO domain_events (programme_id, {owner}type, subject, payload)
                SELECT pm.programme_id, {owner_value}'points.expiring_soon', 'member:' || m.external_id,
                       jsonb_build_object('member_id', m.external_id, 'points', pm.points,
                                          'first_expires_at', pm.first_at, 'lots', pm.lots)
                FROM per_member pm
                JOIN members m ON m.programme_id = pm.programme_id AND m.id = pm.member_id
                ORDER BY pm.programme_id, pm.member_id
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM noted) AS lots, (SELECT count(*) FROM events) AS events
            """.format(**owner)
        ),
        {"n": batch},
    )
    row = result.one()
    return int(row.lots)


async def purge_finished_deliveries(conn: AsyncConnection, older_than_days: int, limit: int) -> int:
    """Forget succeeded and dead deliveries whose last word is older than the retention."""
    if await _on_citus(conn):
        # A ctid names a row of one shard only: the rows are named by their keys.
        result = await conn.execute(
            text(
                """
                DELETE FROM webhook_deliveries d
                USING (SELECT programme_id, id, member_id FROM webhook_deliveries
                       WHERE status IN ('succeeded', 'dead')
                         AND coalesce(succeeded_at, last_attempt_at, created_at)
                             < now() - make_interval(days => :days)
                       LIMIT :n) x
                WHERE d.member_id = x.member_id AND d.programme_id = x.programme_id AND d.id = x.id
                """
            ),
            {"days": older_than_days, "n": limit},
        )
        return int(result.rowcount or 0)
    result = await conn.execute(
        text(
            """
            DELETE FROM webhook_deliveries WHERE ctid = ANY (ARRAY(
                SELECT ctid FROM webhook_deliveries
                WHERE status IN ('succeeded', 'dead')
                  AND coalesce(succeeded_at, last_attempt_at, created_at) < now() - make_interval(days => :days)
                LIMIT :n))
            """
        ),
        {"days": older_than_days, "n": limit},
    )
    return int(result.rowcount or 0)


async def purge_undeliverable_events(conn: AsyncConnection, older_than_days: int, limit: int) -> int:
    """Forget domain events older than the retention that no delivery refers to any more (an
    open delivery, or a finished one still kept for the log, keeps its event for redelivery)."""
    if await _on_citus(conn):
        # An event's deliveries sit on its shard (they copy its member_id).
        result = await conn.execute(
            text(
                """
                DELETE FROM domain_events e
                USING (SELECT o.programme_id, o.id, o.member_id FROM domain_events o
                       WHERE o.created_at < now() - make_interval(days => :days)
                         AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                         WHERE d.member_id = o.member_id AND d.programme_id = o.programme_id
                                           AND d.event_id = o.id)
                       LIMIT :n) x
                WHERE e.member_id = x.member_id AND e.programme_id = x.programme_id AND e.id = x.id
                """
            ),
            {"days": older_than_days, "n": limit},
        )
        return int(result.rowcount or 0)
    result = await conn.execute(
        text(
            """
            DELETE FROM domain_events WHERE ctid = ANY (ARRAY(
                SELECT e.ctid FROM domain_events e
                WHERE e.created_at < now() - make_interval(days => :days)
                  AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                  WHERE d.programme_id = e.programme_id AND d.event_id = e.id)
                LIMIT :n))
            """
        ),
        {"days": older_than_days, "n": limit},
    )
    return int(result.rowcount or 0)

"""All SQL of the reports: the rollup job's statements and the dashboard's reads.

Reads touch only the rollup tables (and the small budgets and programmes tables): each is an
index range scan on ``(programme_id, day)``, whatever the size of the ledger.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

Executor = AsyncConnection | AsyncSession

# Serialises rollup runs (two workers, or the job and `loyalty reports rollup`).
ROLLUP_LOCK = 0x7265706F727473  # "reports"
LEDGER_WATERMARK = "ledger"
# How much of the ledger's history one rollup transaction covers at most (a backlog is
# worked off in steps of this size, each committed with its watermark).
STEP = "1 day"

# Transaction kinds that move a budget's cap with its remaining points: not issuance.
FUNDING_KINDS = ("budget_allocation", "budget_top_up", "budget_move", "budget_close")


async def lock_rollup(conn: Executor) -> None:
    await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ROLLUP_LOCK})


async def commit_horizon(conn: Executor, margin_seconds: float = 1.0) -> datetime:
    """The instant before which every ledger row that will ever exist is committed now.

    A row's ``created_at`` is its transaction's start (``now()``), so a transaction still
    running can only write rows at or after its own ``xact_start``. The second of margin
    covers a transaction that has just begun but not yet published its start (tests,
    with nothing running beside them, pass 0). Must run as
    its own statement *before* the statements that read the rows: their snapshot is then
    taken after every transaction that started before the horizon has ended.
    """
    row = await conn.execute(
        text(
            """
            SELECT least(clock_timestamp() - make_interval(secs => :margin), min(xact_start))
            FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()
              AND backend_type = 'client backend' AND xact_start IS NOT NULL
            """
        ),
        {"margin": margin_seconds},
    )
    value: datetime = row.scalar_one()
    return value


async def watermark(conn: Executor) -> datetime | None:
    row = await conn.execute(
        text("SELECT upto FROM report_watermarks WHERE name = :n"), {"n": LEDGER_WATERMARK}
    )
    return row.scalar_one_or_none()


async def first_ledger_row(conn: Executor) -> datetime | None:
    """Where a first rollup starts: the oldest transaction or event (one scan, once)."""
    row = await conn.execute(
        text(
            "SELECT least((SELECT min(created_at) FROM transactions), "
            "(SELECT min(received_at) FROM member_events))"
        )
    )
    return row.scalar_one_or_none()


async def next_bound(conn: Executor, lo: datetime, horizon: datetime) -> datetime:
    row = await conn.execute(
        text(f"SELECT least(CAST(:h AS timestamptz), CAST(:lo AS timestamptz) + interval '{STEP}')"),
        {"h": horizon, "lo": lo},
    )
    value: datetime = row.scalar_one()
    return value


async def set_watermark(conn: Executor, upto: datetime) -> None:
    await conn.execute(
        text(
            """
            INSERT INTO report_watermarks (name, upto) VALUES (:n, :u)
            ON CONFLICT (name) DO UPDATE SET upto = EXCLUDED.upto, updated_at = now()
            """
        ),
        {"n": LEDGER_WATERMARK, "u": upto},
    )


# One statement: the ledger rows created in [lo, hi) of every programme, added to the daily
# flows, the members' bucket stock, the budgets' burn and the active members. Upserts add to
# the rows, so each interval must be rolled up exactly once: the caller moves the watermark
# to hi in the same transaction.
_ROLLUP_LEDGER = f"""
WITH tx AS (
    SELECT t.programme_id, t.id, t.kind, t.member_id, t.counterparty_id, t.amount, t.cost_micros,
           (t.created_at AT TIME ZONE p.timezone)::date AS day
    FROM transactions t JOIN programmes p ON p.id = t.programme_id
    WHERE t.created_at >= :lo AND t.created_at < :hi
), classified AS (
    SELECT programme_id, day,
           CASE kind WHEN 'earn' THEN 'issued' WHEN 'spend' THEN 'redeemed' WHEN 'capture' THEN 'redeemed'
                     WHEN 'expire' THEN 'expired' WHEN 'clawback' THEN 'clawed_back'
                     WHEN 'adjust' THEN 'adjusted' END AS flow,
           -- Points as the flow's name says: issued and adjusted keep the member's sign,
           -- the others are debits of the member and count positive.
           CASE WHEN kind IN ('earn', 'adjust') THEN amount ELSE -amount END AS points,
           cost_micros
    FROM tx
), flows AS (
    INSERT INTO daily_point_flows AS d (programme_id, day, kind, points, money_micros, tx_count)
    SELECT programme_id, day, flow, sum(points), sum(cost_micros), count(*)
    FROM classified WHERE flow IS NOT NULL
    GROUP BY programme_id, day, flow
    ON CONFLICT (programme_id, day, kind) DO UPDATE SET
        points = d.points + EXCLUDED.points, money_micros = d.money_micros + EXCLUDED.money_micros,
        tx_count = d.tx_count + EXCLUDED.tx_count
    RETURNING 1
), legs AS (
    SELECT tx.programme_id, tx.day, tx.kind, e.account_id, e.bucket, e.amount
    FROM tx JOIN entries e ON e.programme_id = tx.programme_id AND e.txn_id = tx.id
), system_accounts AS (
    -- Few per programme (four sinks and the budgets): every other account is a member's.
    -- (from budgets, and the sinks' partial unique index: never a scan of the members).
    SELECT b.programme_id, b.account_id AS id, b.id AS budget_id
    FROM budgets b WHERE b.programme_id IN (SELECT DISTINCT programme_id FROM tx)
    UNION ALL
    SELECT a.programme_id, a.id, NULL
    FROM accounts a
    WHERE a.kind IN ('funding', 'redemption', 'breakage', 'adjustments')
      AND a.programme_id IN (SELECT DISTINCT programme_id FROM tx)
), stock AS (
    INSERT INTO daily_member_stock AS d (programme_id, day, available, pending, held)
    SELECT l.programme_id, l.day,
           coalesce(sum(l.amount) FILTER (WHERE l.bucket = 0), 0),
           coalesce(sum(l.amount) FILTER (WHERE l.bucket = 1), 0),
           coalesce(sum(l.amount) FILTER (WHERE l.bucket = 2), 0)
    FROM legs l
    WHERE NOT EXISTS (SELECT 1 FROM system_accounts s WHERE s.programme_id = l.programme_id AND s.id = l.account_id)
    GROUP BY l.programme_id, l.day
    ON CONFLICT (programme_id, day) DO UPDATE SET
        available = d.available + EXCLUDED.available, pending = d.pending + EXCLUDED.pending,
        held = d.held + EXCLUDED.held
    RETURNING 1
), burn_days AS (
    SELECT l.programme_id, s.budget_id, l.day,
           coalesce(-sum(l.amount) FILTER (WHERE l.kind NOT IN {FUNDING_KINDS!r}), 0) AS issued,
           coalesce(sum(l.amount) FILTER (WHERE l.kind IN {FUNDING_KINDS!r}), 0) AS cap_change
    FROM legs l JOIN system_accounts s ON s.programme_id = l.programme_id AND s.id = l.account_id
    WHERE s.budget_id IS NOT NULL
    GROUP BY l.programme_id, s.budget_id, l.day
), burn AS (
    INSERT INTO daily_budget_flows AS d (programme_id, budget_id, day, issued, cap_change)
    SELECT programme_id, budget_id, day, issued, cap_change FROM burn_days
    ON CONFLICT (programme_id, budget_id, day) DO UPDATE SET
        issued = d.issued + EXCLUDED.issued, cap_change = d.cap_change + EXCLUDED.cap_change
    RETURNING 1
), burn_totals AS (
    INSERT INTO budget_flow_totals AS t (programme_id, budget_id, issued, cap)
    SELECT programme_id, budget_id, sum(issued), sum(cap_change) FROM burn_days GROUP BY programme_id, budget_id
    ON CONFLICT (programme_id, budget_id) DO UPDATE SET issued = t.issued + EXCLUDED.issued, cap = t.cap + EXCLUDED.cap
    RETURNING 1
), touched AS (
    SELECT programme_id, day, member_id FROM tx WHERE member_id IS NOT NULL
    UNION
    SELECT programme_id, day, counterparty_id FROM tx WHERE counterparty_id IS NOT NULL
    UNION
    SELECT ev.programme_id, (ev.received_at AT TIME ZONE p.timezone)::date, ev.member_id
    FROM member_events ev JOIN programmes p ON p.id = ev.programme_id
    WHERE ev.received_at >= :lo AND ev.received_at < :hi
), newly_active AS (
    INSERT INTO member_active_days (programme_id, day, member_id)
    SELECT programme_id, day, member_id FROM touched
    ON CONFLICT DO NOTHING
    RETURNING programme_id, day
), active AS (
    INSERT INTO daily_members AS d (programme_id, day, active_members)
    SELECT programme_id, day, count(*) FROM newly_active GROUP BY programme_id, day
    ON CONFLICT (programme_id, day) DO UPDATE SET active_members = d.active_members + EXCLUDED.active_members
    RETURNING 1
)
SELECT (SELECT count(*) FROM tx) AS transactions,
       (SELECT count(*) FROM flows) + (SELECT count(*) FROM stock) + (SELECT count(*) FROM burn)
       + (SELECT count(*) FROM burn_totals) + (SELECT count(*) FROM active) AS rows
"""


async def rollup_ledger(conn: Executor, lo: datetime, hi: datetime) -> int:
    """Rolls up the ledger rows created in [lo, hi); returns how many transactions."""
    row = (await conn.execute(text(_ROLLUP_LEDGER), {"lo": lo, "hi": hi})).one()
    return int(row.transactions)


async def prune_active_days(conn: Executor, upto: datetime) -> None:
    """Days that ended before the watermark get no more rows: their member sets can go.
    Two days of margin: no time zone is more than a day from UTC."""
    await conn.execute(
        text(
            "DELETE FROM member_active_days WHERE day < (CAST(:u AS timestamptz) AT TIME ZONE 'UTC')::date - 2"
        ),
        {"u": upto},
    )


async def fold_deltas(conn: Executor, limit: int = 50_000) -> int:
    """Moves the triggers' deltas (enrolments, tier changes) into their rollups, deleting
    them in the same statement: a delta is counted exactly once, whenever its writer commits."""
    row = await conn.execute(
        text(
            """
            WITH d AS (
                DELETE FROM report_deltas WHERE id IN (SELECT id FROM report_deltas ORDER BY id LIMIT :n)
                RETURNING programme_id, day, metric, kind, from_tier, to_tier, n
            ), enrolled AS (
                INSERT INTO daily_members AS m (programme_id, day, new_members)
                SELECT programme_id, day, sum(n) FROM d WHERE metric = 'new_member' GROUP BY programme_id, day
                ON CONFLICT (programme_id, day) DO UPDATE SET new_members = m.new_members + EXCLUDED.new_members
                RETURNING 1
            ), moves AS (
                INSERT INTO weekly_tier_moves AS w (programme_id, week, kind, from_tier, to_tier, moves)
                SELECT programme_id, date_trunc('week', day)::date, kind, from_tier, to_tier, sum(n)
                FROM d WHERE metric = 'tier_move'
                GROUP BY programme_id, date_trunc('week', day)::date, kind, from_tier, to_tier
                ON CONFLICT (programme_id, week, kind, from_tier, to_tier) DO UPDATE SET moves = w.moves + EXCLUDED.moves
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM d) + 0 * ((SELECT count(*) FROM enrolled) + (SELECT count(*) FROM moves))
            """
        ),
        {"n": limit},
    )
    return int(row.scalar_one())


async def refresh_expiry_forecast(conn: Executor) -> int:
    """Points due to expire per local month over the next 12 months, from the lots, for every
    programme (one range scan of ix_lots_expiry). Lots already past due count in this month."""
    await conn.execute(text("DELETE FROM expiry_forecast"))
    result = await conn.execute(
        text(
            """
            WITH refreshed AS (
            INSERT INTO expiry_forecast (programme_id, month, points, money_micros, computed_at)
            SELECT l.programme_id,
                   date_trunc('month', greatest(l.expires_at, now()) AT TIME ZONE p.timezone)::date,
                   sum(l.remaining), sum(l.remaining * l.unit_cost_micros), now()
            FROM lots l JOIN programmes p ON p.id = l.programme_id
            WHERE l.remaining > 0 AND l.expires_at IS NOT NULL
              AND l.expires_at < (date_trunc('month', now() AT TIME ZONE p.timezone) + interval '12 months')
                                 AT TIME ZONE p.timezone
            GROUP BY 1, 2
            RETURNING 1
            ) SELECT count(*) FROM refreshed
            """
        )
    )
    return int(result.scalar_one())


# Reads ------------------------------------------------------------------------------------


async def programme(conn: Executor, programme_id: int) -> dict[str, Any] | None:
    """The programme's currency and time zone, its local today and the rollup's watermark."""
    row = await conn.execute(
        text(
            """
            SELECT p.id, p.code, p.currency, p.timezone, (now() AT TIME ZONE p.timezone)::date AS today,
                   (SELECT upto FROM report_watermarks WHERE name = :w) AS rolled_up_to
            FROM programmes p WHERE p.id = :p
            """
        ),
        {"p": programme_id, "w": LEDGER_WATERMARK},
    )
    found = row.one_or_none()
    return dict(found._mapping) if found else None


_FLOWS = ("issued", "redeemed", "expired", "clawed_back", "adjusted")
_PER_KIND = ",\n".join(
    f"sum(points) FILTER (WHERE kind = '{k}') AS {k}_points, sum(money_micros) FILTER (WHERE kind = '{k}') AS {k}_micros"
    for k in _FLOWS
)
_DENSE = ", ".join(
    f"coalesce(f.{k}_points, 0)::bigint AS {k}_points, coalesce(f.{k}_micros, 0)::bigint AS {k}_micros"
    for k in _FLOWS
)
_DAYS = "generate_series(CAST(:s AS date), CAST(:u AS date), interval '1 day') AS g(d)"


async def flow_days(conn: Executor, programme_id: int, since: date, until: date) -> list[dict[str, Any]]:
    """Every day of the period with each flow's points and micros (zeros on quiet days)."""
    rows = await conn.execute(
        text(
            f"""
            WITH f AS (
                SELECT day, {_PER_KIND}
                FROM daily_point_flows WHERE programme_id = :p AND day BETWEEN :s AND :u GROUP BY day)
            SELECT g.d::date AS day, {_DENSE} FROM {_DAYS} LEFT JOIN f ON f.day = g.d::date ORDER BY 1
            """
        ),
        {"p": programme_id, "s": since, "u": until},
    )
    return [dict(r._mapping) for r in rows]


async def flow_sums(conn: Executor, programme_id: int, since: date, until: date) -> dict[str, int]:
    row = await conn.execute(
        text(
            f"""
            SELECT {_DENSE} FROM (SELECT {_PER_KIND} FROM daily_point_flows
                                  WHERE programme_id = :p AND day BETWEEN :s AND :u) f
            """
        ),
        {"p": programme_id, "s": since, "u": until},
    )
    return {k: int(v) for k, v in row.one()._mapping.items()}


# What each flow does to the outstanding points and their value.
_NET_POINTS = "CASE WHEN kind IN ('issued', 'adjusted') THEN points ELSE -points END"
_NET_MONEY = "CASE WHEN kind IN ('issued', 'adjusted') THEN money_micros ELSE -money_micros END"
_NET = f"""
    coalesce(sum({_NET_POINTS}), 0) AS points, coalesce(sum({_NET_MONEY}), 0) AS money,
    coalesce(sum(points) FILTER (WHERE kind = 'expired'), 0) AS expired,
    coalesce(sum(points) FILTER (WHERE kind = 'redeemed'), 0) AS redeemed"""


async def liability_days(conn: Executor, programme_id: int, since: date, until: date) -> list[dict[str, Any]]:
    """At the end of each day: outstanding points and liability (the running net of every
    flow since the programme began), and expired and redeemed points to date."""
    rows = await conn.execute(
        text(
            f"""
            WITH o AS (SELECT {_NET} FROM daily_point_flows WHERE programme_id = :p AND day < :s),
            f AS (SELECT day, {_NET} FROM daily_point_flows
                  WHERE programme_id = :p AND day BETWEEN :s AND :u GROUP BY day),
            dense AS (
                SELECT g.d::date AS day, coalesce(f.points, 0) AS points, coalesce(f.money, 0) AS money,
                       coalesce(f.expired, 0) AS expired, coalesce(f.redeemed, 0) AS redeemed
                FROM {_DAYS} LEFT JOIN f ON f.day = g.d::date)
            SELECT day, (o.points + sum(dense.points) OVER w)::bigint AS outstanding_points,
                   (o.money + sum(dense.money) OVER w)::bigint AS liability_micros,
                   (o.expired + sum(dense.expired) OVER w)::bigint AS expired,
                   (o.redeemed + sum(dense.redeemed) OVER w)::bigint AS redeemed
            FROM dense, o WINDOW w AS (ORDER BY day) ORDER BY day
            """
        ),
        {"p": programme_id, "s": since, "u": until},
    )
    return [dict(r._mapping) for r in rows]


async def stock_now(conn: Executor, programme_id: int) -> tuple[int, int, int]:
    rows = await conn.execute(
        text(
            """
            SELECT coalesce(sum(available), 0)::bigint, coalesce(sum(pending), 0)::bigint,
                   coalesce(sum(held), 0)::bigint
            FROM daily_member_stock WHERE programme_id = :p
            """
        ),
        {"p": programme_id},
    )
    a, p, h = rows.one()
    return int(a), int(p), int(h)


async def stock_days(conn: Executor, programme_id: int, since: date, until: date) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            f"""
            WITH o AS (SELECT coalesce(sum(available), 0) AS a, coalesce(sum(pending), 0) AS p,
                              coalesce(sum(held), 0) AS h
                       FROM daily_member_stock WHERE programme_id = :p AND day < :s),
            dense AS (
                SELECT g.d::date AS day, coalesce(x.available, 0) AS a, coalesce(x.pending, 0) AS p,
                       coalesce(x.held, 0) AS h
                FROM {_DAYS} LEFT JOIN daily_member_stock x
                     ON x.programme_id = :p AND x.day = g.d::date AND x.day BETWEEN :s AND :u)
            SELECT day, (o.a + sum(dense.a) OVER w)::bigint AS available,
                   (o.p + sum(dense.p) OVER w)::bigint AS pending, (o.h + sum(dense.h) OVER w)::bigint AS held
            FROM dense, o WINDOW w AS (ORDER BY day) ORDER BY day
            """
        ),
        {"p": programme_id, "s": since, "u": until},
    )
    return [dict(r._mapping) for r in rows]


async def expiry_forecast(conn: Executor, programme_id: int) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            "SELECT month, points, money_micros, computed_at FROM expiry_forecast "
            "WHERE programme_id = :p ORDER BY month"
        ),
        {"p": programme_id},
    )
    return [dict(r._mapping) for r in rows]


async def forecast_computed_at(conn: Executor) -> datetime | None:
    row = await conn.execute(text("SELECT max(computed_at) FROM expiry_forecast"))
    return row.scalar_one_or_none()


async def tier_counts(conn: Executor, programme_id: int) -> dict[str, int]:
    """Members per tier now: every move into a tier minus every move out of it."""
    rows = await conn.execute(
        text(
            """
            SELECT tier, sum(n)::bigint AS members FROM (
                SELECT to_tier AS tier, moves AS n FROM weekly_tier_moves WHERE programme_id = :p
                UNION ALL
                SELECT from_tier, -moves FROM weekly_tier_moves WHERE programme_id = :p
            ) x WHERE tier <> '' GROUP BY tier
            """
        ),
        {"p": programme_id},
    )
    return {r.tier: int(r.members) for r in rows}


async def ladder_tiers(conn: Executor, programme_id: int) -> list[tuple[str, int]]:
    """The tiers (code, rank) of the ladder in force, lowest first; empty without a ladder."""
    rows = await conn.execute(
        text(
            """
            SELECT t->>'code' AS code, (t->>'rank')::int AS rank
            FROM (SELECT definition FROM tier_ladder_versions
                  WHERE programme_id = :p AND status IN ('published', 'superseded') AND effective_at <= now()
                  ORDER BY effective_at DESC, version DESC LIMIT 1) v,
                 jsonb_array_elements(v.definition->'tiers') t
            ORDER BY 2
            """
        ),
        {"p": programme_id},
    )
    return [(r.code, int(r.rank)) for r in rows]


async def tier_moves(conn: Executor, programme_id: int, since: date, until: date) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            """
            SELECT week, kind, from_tier, to_tier, moves FROM weekly_tier_moves
            WHERE programme_id = :p AND week BETWEEN date_trunc('week', CAST(:s AS date))::date AND :u
            ORDER BY week, kind, from_tier, to_tier
            """
        ),
        {"p": programme_id, "s": since, "u": until},
    )
    return [dict(r._mapping) for r in rows]


async def member_days(conn: Executor, programme_id: int, since: date, until: date) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            f"""
            WITH o AS (SELECT coalesce(sum(new_members), 0) AS n FROM daily_members
                       WHERE programme_id = :p AND day < :s),
            dense AS (
                SELECT g.d::date AS day, coalesce(x.new_members, 0) AS new_members,
                       coalesce(x.active_members, 0) AS active_members
                FROM {_DAYS} LEFT JOIN daily_members x
                     ON x.programme_id = :p AND x.day = g.d::date AND x.day BETWEEN :s AND :u)
            SELECT day, new_members::bigint, active_members::bigint,
                   (o.n + sum(new_members) OVER (ORDER BY day))::bigint AS total_members
            FROM dense, o ORDER BY day
            """
        ),
        {"p": programme_id, "s": since, "u": until},
    )
    return [dict(r._mapping) for r in rows]


async def members_total(conn: Executor, programme_id: int) -> int:
    row = await conn.execute(
        text("SELECT coalesce(sum(new_members), 0)::bigint FROM daily_members WHERE programme_id = :p"),
        {"p": programme_id},
    )
    return int(row.scalar_one())


async def budget_series(conn: Executor, programme_id: int, since: date, until: date) -> list[dict[str, Any]]:
    """Per budget: its issued points and cap now (as rolled up), before the period, and their
    change on each day of the period (two arrays aligned with the days)."""
    rows = await conn.execute(
        text(
            f"""
            WITH f AS (SELECT budget_id, day, issued, cap_change FROM daily_budget_flows
                       WHERE programme_id = :p AND day >= :s),
            -- The level before the period: the totals less what came since (a range scan of the
            -- period and after, never of the whole history).
            later AS (SELECT budget_id, sum(issued) AS issued, sum(cap_change) AS cap FROM f GROUP BY budget_id),
            grid AS (
                SELECT b.id AS budget_id, g.d::date AS day, coalesce(f.issued, 0) AS issued,
                       coalesce(f.cap_change, 0) AS cap
                FROM budgets b CROSS JOIN {_DAYS}
                LEFT JOIN f ON f.budget_id = b.id AND f.day = g.d::date
                WHERE b.programme_id = :p),
            series AS (
                SELECT budget_id, array_agg(issued ORDER BY day) AS issued, array_agg(cap ORDER BY day) AS cap
                FROM grid GROUP BY budget_id)
            SELECT b.id, b.code, b.name, b.status, b.unit_cost_micros,
                   coalesce(t.issued, 0)::bigint AS issued, coalesce(t.cap, 0)::bigint AS cap,
                   (coalesce(t.issued, 0) - coalesce(later.issued, 0))::bigint AS opening_issued,
                   (coalesce(t.cap, 0) - coalesce(later.cap, 0))::bigint AS opening_cap,
                   series.issued AS issued_changes, series.cap AS cap_changes
            FROM budgets b JOIN series ON series.budget_id = b.id
            LEFT JOIN budget_flow_totals t ON t.programme_id = b.programme_id AND t.budget_id = b.id
            LEFT JOIN later ON later.budget_id = b.id
            WHERE b.programme_id = :p
            ORDER BY b.code
            """
        ),
        {"p": programme_id, "s": since, "u": until},
    )
    return [dict(r._mapping) for r in rows]


async def export_rows(
    conn: AsyncConnection, programme_id: int, start: datetime, end: datetime, batch: int = 2_000
) -> AsyncIterator[Any]:
    """The programme's transactions created in [start, end), oldest first, from a server-side
    cursor: memory stays flat whatever the period holds."""
    result = await conn.stream(
        text(
            """
            SELECT t.id, t.created_at, t.kind, m.external_id AS member, cp.external_id AS counterparty,
                   b.code AS budget, t.reference, t.reason, t.amount, t.cost_micros, t.actor, t.hold_id,
                   t.reverses_id
            FROM transactions t
            LEFT JOIN members m ON m.programme_id = t.programme_id AND m.id = t.member_id
            LEFT JOIN members cp ON cp.programme_id = t.programme_id AND cp.id = t.counterparty_id
            LEFT JOIN budgets b ON b.programme_id = t.programme_id AND b.id = t.budget_id
            WHERE t.programme_id = :p AND t.created_at >= :s AND t.created_at < :e
            ORDER BY t.created_at, t.id
            """
        ).execution_options(yield_per=batch),
        {"p": programme_id, "s": start, "e": end},
    )
    async for row in result:
        yield row


async def programme_id_by_code(conn: Executor, code: str) -> int | None:
    row = await conn.execute(text("SELECT id FROM programmes WHERE code = :c"), {"c": code})
    value = row.scalar_one_or_none()
    return None if value is None else int(value)

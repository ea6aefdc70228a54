"""All SQL of member activity and earning rules."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

import asyncpg
import msgspec
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.distribution import Layout, member_key
from loyalty.idempotency import Posted
from loyalty.ledger.group_commit import EVENT_WRITE, GroupCommitter, Refused
from loyalty.tiers.repository import TIER_COLUMNS

_DEFAULT_SETTINGS: dict[str, Any] = {
    "window_kind": "rolling_months",
    "window_months": 12,
    "rfm": {},
    "lifecycle": {},
    "custom_event_types": [],
}


def _json(value: Any) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


# Settings ----------------------------------------------------------------------------------


async def settings(conn: AsyncConnection, programme_id: int) -> dict[str, Any]:
    row = (
        await conn.execute(
            text(
                "SELECT window_kind, window_months, rfm, lifecycle, custom_event_types "
                "FROM activity_settings WHERE programme_id = :p"
            ),
            {"p": programme_id},
        )
    ).first()
    return dict(row._mapping) if row else dict(_DEFAULT_SETTINGS)


async def put_settings(conn: AsyncConnection, programme_id: int, values: dict[str, Any]) -> None:
    await conn.execute(
        text(
            """
            INSERT INTO activity_settings (programme_id, window_kind, window_months, rfm, lifecycle,
                                           custom_event_types, updated_at)
            VALUES (:p, :wk, :wm, CAST(:rfm AS jsonb), CAST(:lc AS jsonb), :custom, now())
            ON CONFLICT (programme_id) DO UPDATE SET
                window_kind = excluded.window_kind, window_months = excluded.window_months,
                rfm = excluded.rfm, lifecycle = excluded.lifecycle,
                custom_event_types = excluded.custom_event_types, updated_at = excluded.updated_at
            """
        ),
        {
            "p": programme_id,
            "wk": values["window_kind"],
            "wm": values["window_months"],
            "rfm": _json(values["rfm"]),
            "lc": _json(values["lifecycle"]),
            "custom": values["custom_event_types"],
        },
    )


async def programme_timezone(conn: AsyncConnection, programme_id: int) -> str:
    return str(
        (
            await conn.execute(text("SELECT timezone FROM programmes WHERE id = :p"), {"p": programme_id})
        ).scalar_one()
    )


async def programme_config(conn: AsyncConnection, programme_id: int) -> dict[str, Any]:
    """What an event reads as configuration, with the version that validates a cached copy."""
    row = (
        await conn.execute(
            text(
                "SELECT p.config_version, p.timezone, a.window_kind, a.window_months, a.rfm, a.lifecycle, "
                "a.custom_event_types, a.programme_id IS NOT NULL AS has_settings, "
                "EXISTS (SELECT 1 FROM benefits b WHERE b.programme_id = p.id AND b.type = 'multiplier' "
                "AND b.active) AS has_multipliers "
                "FROM programmes p LEFT JOIN activity_settings a ON a.programme_id = p.id WHERE p.id = :p"
            ),
            {"p": programme_id},
        )
    ).one()
    values = dict(row._mapping)
    settings = (
        {k: values[k] for k in _DEFAULT_SETTINGS} if values["has_settings"] else dict(_DEFAULT_SETTINGS)
    )
    return {
        "config_version": values["config_version"],
        "timezone": values["timezone"],
        "settings": settings,
        "has_multipliers": values["has_multipliers"],
    }


# Members and events ------------------------------------------------------------------------


async def member(conn: AsyncConnection, programme_id: int, external_id: str) -> tuple[int, str] | None:
    row = (
        await conn.execute(
            text("SELECT id, status FROM members WHERE programme_id = :p AND external_id = :e"),
            {"p": programme_id, "e": external_id},
        )
    ).first()
    return (row[0], row[1]) if row else None


# The start of every event, one round trip: the member, the event row (nothing more when its
# event id is taken), the member's facts row taken (created if need be, with the order's time
# noted), then the order's activity day; and the programme's config version. The activity day
# reads from the facts CTE so that the facts row is always locked first.
_BEGIN_EVENT = text(
    """
    WITH mem AS (
        SELECT id FROM members WHERE programme_id = :p AND external_id = :external
    ), ins AS (
        INSERT INTO member_events (programme_id, member_id, event_id, type, occurred_at, order_ref, amount,
                                   currency, channel, payload)
        SELECT :p, mem.id, :event_id, :type, :occurred_at, :order_ref, :amount, :currency, :channel,
               CAST(:payload AS jsonb)
        FROM mem
        ON CONFLICT (programme_id, event_id) DO NOTHING
        RETURNING id, member_id
    ), fct AS (
        INSERT INTO member_facts AS mf (programme_id, member_id, first_order_at, last_order_at)
        SELECT :p, ins.member_id, CAST(:order_at AS timestamptz), CAST(:order_at AS timestamptz) FROM ins
        ON CONFLICT (programme_id, member_id) DO UPDATE SET
            first_order_at = least(mf.first_order_at, excluded.first_order_at),
            last_order_at = greatest(mf.last_order_at, excluded.last_order_at)
        RETURNING mf.member_id
    ), day AS (
        INSERT INTO member_activity_days (programme_id, member_id, day, orders, spend, qualifying_points)
        SELECT :p, fct.member_id, :day, :orders, :spend, 0 FROM fct WHERE CAST(:add_day AS boolean)
        ON CONFLICT (programme_id, member_id, day) DO UPDATE SET
            orders = member_activity_days.orders + excluded.orders,
            spend = member_activity_days.spend + excluded.spend
    )
    SELECT p.config_version, (SELECT id FROM mem) AS member_id, (SELECT id FROM ins) AS row_id
    FROM programmes p WHERE p.id = :p
    """
)


async def begin_event(
    conn: AsyncConnection,
    programme_id: int,
    external_id: str,
    event: dict[str, Any],
    payload: dict[str, Any],
    *,
    order_at: datetime | None,
    day: date,
    orders: int = 0,
    spend: int | None = None,
) -> tuple[int, int | None, int | None]:
    """(config version, member id or None, new event row id or None when the id is taken).

    ``order_at`` notes an order's time on the facts; ``spend`` (None: no activity day) is added
    to the day's figures with ``orders``."""
    if Layout.citus:
        return await _begin_event_routed(
            conn,
            programme_id,
            external_id,
            event,
            payload,
            order_at=order_at,
            day=day,
            orders=orders,
            spend=spend,
        )
    row = (
        await conn.execute(
            _BEGIN_EVENT,
            {
                "p": programme_id,
                "external": external_id,
                **event,
                "payload": _json(payload),
                "order_at": order_at,
                "day": day,
                "orders": orders,
                "spend": spend or 0,
                "add_day": spend is not None,
            },
        )
    ).one()
    return row[0], row[1], row[2]


# begin_event's statements on Citus, each filtered by the member's key (a writable CTE whose
# INSERT ... SELECT reads a distributed table is not a router query there).
_BEGIN_MEMBER = text("SELECT id FROM members WHERE programme_id = :p AND external_id = :external AND id = :m")
_BEGIN_ROW = text(
    """
    INSERT INTO member_events (programme_id, member_id, event_id, type, occurred_at, order_ref, amount,
                               currency, channel, payload)
    VALUES (:p, :m, :event_id, :type, :occurred_at, :order_ref, :amount, :currency, :channel,
            CAST(:payload AS jsonb))
    ON CONFLICT (programme_id, event_id, member_id) DO NOTHING
    RETURNING id
    """
)
_BEGIN_FACTS = text(
    """
    INSERT INTO member_facts AS mf (programme_id, member_id, first_order_at, last_order_at)
    VALUES (:p, :m, CAST(:order_at AS timestamptz), CAST(:order_at AS timestamptz))
    ON CONFLICT (programme_id, member_id) DO UPDATE SET
        first_order_at = least(mf.first_order_at, excluded.first_order_at),
        last_order_at = greatest(mf.last_order_at, excluded.last_order_at)
    """
)
_BEGIN_DAY = text(
    """
    INSERT INTO member_activity_days AS d (programme_id, member_id, day, orders, spend, qualifying_points)
    VALUES (:p, :m, :day, :orders, :spend, 0)
    ON CONFLICT (programme_id, member_id, day) DO UPDATE SET
        orders = d.orders + excluded.orders, spend = d.spend + excluded.spend
    """
)


async def _begin_event_routed(
    conn: AsyncConnection,
    programme_id: int,
    external_id: str,
    event: dict[str, Any],
    payload: dict[str, Any],
    *,
    order_at: datetime | None,
    day: date,
    orders: int,
    spend: int | None,
) -> tuple[int, int | None, int | None]:
    """begin_event on Citus: the same writes in the same order, on the member's shard."""
    key = member_key(programme_id, external_id)
    version = int(
        (
            await conn.execute(
                text("SELECT config_version FROM programmes WHERE id = :p"), {"p": programme_id}
            )
        ).scalar_one()
    )
    params = {"p": programme_id, "external": external_id, "m": key}
    if (await conn.execute(_BEGIN_MEMBER, params)).scalar() is None:
        return version, None, None
    row_id = (await conn.execute(_BEGIN_ROW, {**params, **event, "payload": _json(payload)})).scalar()
    if row_id is None:
        return version, key, None
    await conn.execute(_BEGIN_FACTS, {**params, "order_at": order_at})
    if spend is not None:
        await conn.execute(_BEGIN_DAY, {**params, "day": day, "orders": orders, "spend": spend})
    return version, key, int(row_id)


async def stored_event(conn: AsyncConnection, programme_id: int, event_id: str) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text("SELECT payload, response FROM member_events WHERE programme_id = :p AND event_id = :e"),
            {"p": programme_id, "e": event_id},
        )
    ).first()
    return dict(row._mapping) if row else None


async def finish_event(
    conn: AsyncConnection,
    programme_id: int,
    member_id: int,
    row_id: int,
    amount: int | None,
    points: int,
    outcome: dict[str, Any],
    response: Any,
) -> None:
    """The event's outcome and stored answer."""
    await conn.execute(
        text(
            "UPDATE member_events SET amount = :a, points = :pts, outcome = CAST(:o AS jsonb), "
            "response = CAST(:r AS jsonb) WHERE programme_id = :p AND member_id = :m AND id = :id"
        ),
        {
            "a": amount,
            "p": programme_id,
            "m": member_id,
            "id": row_id,
            "pts": points,
            "o": _json(outcome),
            "r": _json(response),
        },
    )


async def order_history(
    conn: AsyncConnection, programme_id: int, member_id: int, order_ref: str
) -> dict[str, Any]:
    """What an order earned and what its earlier refunds took: the basis of a proportional
    clawback; and when the order was placed (ordered_at, None without an order)."""
    row = (
        await conn.execute(
            text(
                """
                SELECT count(*) FILTER (WHERE type = 'order_completed') AS orders,
                       coalesce(sum(amount) FILTER (WHERE type = 'order_completed'), 0) AS order_amount,
                       coalesce(sum(points) FILTER (WHERE type = 'order_completed'), 0) AS earned,
                       coalesce(sum((outcome->>'qualifying')::bigint) FILTER (WHERE type = 'order_completed'), 0)
                           AS qualifying,
                       coalesce(-sum(amount) FILTER (WHERE type = 'order_refunded'), 0) AS refunded,
                       coalesce(-sum(points) FILTER (WHERE type = 'order_refunded'), 0) AS clawed,
                       min(occurred_at) FILTER (WHERE type = 'order_completed') AS ordered_at
                FROM member_events
                WHERE programme_id = :p AND order_ref = :o AND member_id = :m AND response IS NOT NULL
                """
            ),
            {"p": programme_id, "m": member_id, "o": order_ref},
        )
    ).one()
    return dict(row._mapping)


async def events_page(
    conn: AsyncConnection, programme_id: int, member_id: int, before_id: int | None, limit: int
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            """
            SELECT id, event_id, type, occurred_at, received_at, order_ref, amount, currency, channel, points
            FROM member_events
            WHERE programme_id = :p AND member_id = :m AND (CAST(:before AS bigint) IS NULL OR id < :before)
            ORDER BY id DESC LIMIT :n
            """
        ),
        {"p": programme_id, "m": member_id, "before": before_id, "n": limit},
    )
    return [dict(r._mapping) for r in rows]


# Facts -------------------------------------------------------------------------------------


async def add_activity(
    conn: AsyncConnection,
    programme_id: int,
    member_id: int,
    day: date,
    *,
    orders: int = 0,
    spend: int = 0,
    qualifying_points: int = 0,
) -> None:
    await conn.execute(
        text(
            """
            INSERT INTO member_activity_days (programme_id, member_id, day, orders, spend, qualifying_points)
            VALUES (:p, :m, :d, :o, :s, :q)
            ON CONFLICT (programme_id, member_id, day) DO UPDATE SET
                orders = member_activity_days.orders + excluded.orders,
                spend = member_activity_days.spend + excluded.spend,
                qualifying_points = member_activity_days.qualifying_points + excluded.qualifying_points
            """
        ),
        {"p": programme_id, "m": member_id, "d": day, "o": orders, "s": spend, "q": qualifying_points},
    )


async def note_order(conn: AsyncConnection, programme_id: int, member_id: int, occurred_at: datetime) -> None:
    """First and last order times (the facts row is created here if the member had none)."""
    await conn.execute(
        text(
            """
            INSERT INTO member_facts (programme_id, member_id, first_order_at, last_order_at)
            VALUES (:p, :m, :t, :t)
            ON CONFLICT (programme_id, member_id) DO UPDATE SET
                first_order_at = least(member_facts.first_order_at, excluded.first_order_at),
                last_order_at = greatest(member_facts.last_order_at, excluded.last_order_at)
            """
        ),
        {"p": programme_id, "m": member_id, "t": occurred_at},
    )


async def add_points_and_activity(
    conn: AsyncConnection,
    programme_id: int,
    member_id: int,
    day: date,
    *,
    lifetime: int,
    qualifying: int,
    in_window: bool,
) -> None:
    """add_activity(qualifying_points=qualifying) and the facts' points in one statement; the caller
    holds the facts row already (no lock order to keep between the two rows). The facts' window
    sum takes the qualifying points only when ``day`` is in the window (core.in_window)."""
    await conn.execute(
        text(
            """
            WITH d AS (
                INSERT INTO member_activity_days (programme_id, member_id, day, orders, spend, qualifying_points)
                VALUES (:p, :m, :d, 0, 0, :q)
                ON CONFLICT (programme_id, member_id, day) DO UPDATE SET
                    qualifying_points = member_activity_days.qualifying_points + excluded.qualifying_points
            )
            INSERT INTO member_facts (programme_id, member_id, lifetime_points, qualifying_points)
            VALUES (:p, :m, greatest(:l, 0), greatest(:wq, 0))
            ON CONFLICT (programme_id, member_id) DO UPDATE SET
                lifetime_points = member_facts.lifetime_points + :l,
                qualifying_points = member_facts.qualifying_points + :wq, updated_at = excluded.updated_at
            """
        ),
        {
            "p": programme_id,
            "m": member_id,
            "d": day,
            "l": lifetime,
            "q": qualifying,
            "wq": qualifying if in_window else 0,
        },
    )


# One statement recomputes the facts of one member or of a whole programme: window sums from
# member_activity_days, then RFM and lifecycle from the programme's settings (the same
# definitions as activity.core). With :rebuild, first/last order and lifetime points are
# recomputed from the events and the ledger too (imports); otherwise they are kept, since they
# are maintained as events arrive and do not change as time passes.
_REFRESH_SQL = """
    WITH s AS (
        SELECT p.id, p.timezone AS tz, coalesce(a.window_kind, 'rolling_months') AS window_kind,
               coalesce(a.window_months, 12) AS window_months, coalesce(a.rfm, '{}') AS rfm,
               coalesce(a.lifecycle, '{}') AS lc
        FROM programmes p LEFT JOIN activity_settings a ON a.programme_id = p.id
        WHERE p.id = :p
    ), m AS (
        SELECT m.id AS member_id, m.enrolled_at,
               CASE s.window_kind
                   WHEN 'rolling_months' THEN CAST(:now AS timestamptz) - make_interval(months => s.window_months)
                   WHEN 'calendar_year' THEN date_trunc('year', CAST(:now AS timestamptz) AT TIME ZONE s.tz)
                                             AT TIME ZONE s.tz
                   ELSE m.enrolled_at + make_interval(
                       years => CAST(extract(year FROM age(CAST(:now AS timestamptz), m.enrolled_at)) AS int))
               END AS window_start
        FROM members m CROSS JOIN s
        WHERE m.programme_id = :p {member_filter}
    ), d AS (
        SELECT m.member_id,
               sum(d.orders) AS lifetime_orders, sum(d.spend) AS lifetime_spend,
               coalesce(sum(d.orders) FILTER (WHERE d.day >= CAST(m.window_start AT TIME ZONE s.tz AS date)), 0)
                   AS orders,
               coalesce(sum(d.spend) FILTER (WHERE d.day >= CAST(m.window_start AT TIME ZONE s.tz AS date)), 0)
                   AS spend,
               coalesce(sum(d.qualifying_points)
                        FILTER (WHERE d.day >= CAST(m.window_start AT TIME ZONE s.tz AS date)), 0) AS qualifying
        FROM m CROSS JOIN s
        JOIN member_activity_days d ON d.programme_id = :p AND d.member_id = m.member_id
        GROUP BY m.member_id
    ), o AS (
        SELECT e.member_id, min(e.occurred_at) AS first_at, max(e.occurred_at) AS last_at
        FROM member_events e JOIN m ON m.member_id = e.member_id
        WHERE CAST(:rebuild AS boolean) AND e.programme_id = :p AND e.type = 'order_completed'
        GROUP BY e.member_id
    ), t AS (
        -- What events earned, as the event path counts it (greatest(points, 0) per event):
        -- a promotion bonus or a manual earn is in the ledger, not in the activity facts.
        SELECT e.member_id, sum(greatest(e.points, 0)) AS points
        FROM member_events e JOIN m ON m.member_id = e.member_id
        WHERE CAST(:rebuild AS boolean) AND e.programme_id = :p
        GROUP BY e.member_id
    ), f AS (
        SELECT m.member_id, m.enrolled_at, m.window_start,
               coalesce(d.orders, 0) AS orders, coalesce(d.spend, 0) AS spend,
               coalesce(d.qualifying, 0) AS qualifying,
               coalesce(d.lifetime_orders, 0) AS lifetime_orders, coalesce(d.lifetime_spend, 0) AS lifetime_spend,
               CASE WHEN :rebuild THEN o.first_at ELSE old.first_order_at END AS first_order_at,
               CASE WHEN :rebuild THEN o.last_at ELSE old.last_order_at END AS last_order_at,
               CASE WHEN :rebuild THEN coalesce(t.points, 0) ELSE coalesce(old.lifetime_points, 0) END
                   AS lifetime_points
        FROM m
        LEFT JOIN d ON d.member_id = m.member_id
        LEFT JOIN o ON o.member_id = m.member_id
        LEFT JOIN t ON t.member_id = m.member_id
        LEFT JOIN member_facts old ON old.programme_id = :p AND old.member_id = m.member_id
    ), g AS (
        SELECT f.*,
               CAST(floor(extract(epoch FROM CAST(:now AS timestamptz) - f.last_order_at) / 86400) AS int)
                   AS recency_days,
               CAST(floor(extract(epoch FROM CAST(:now AS timestamptz) - f.enrolled_at) / 86400) AS int)
                   AS enrolment_days
        FROM f
    )
    INSERT INTO member_facts AS mf (
        programme_id, member_id, qualifying_points, spend, orders, lifetime_points, lifetime_spend,
        lifetime_orders, first_order_at, last_order_at, recency_score, frequency_score, monetary_score,
        lifecycle, window_start, updated_at)
    SELECT CAST(:p AS bigint), g.member_id, g.qualifying, g.spend, g.orders, g.lifetime_points, g.lifetime_spend,
           g.lifetime_orders, g.first_order_at, g.last_order_at,
           CASE WHEN s.rfm ? 'recency_days' THEN
               CASE WHEN g.recency_days IS NULL THEN 1
                    ELSE 5 - (SELECT count(*) FROM jsonb_array_elements(s.rfm->'recency_days') c
                              WHERE g.recency_days > CAST(c AS bigint)) END END,
           CASE WHEN s.rfm ? 'frequency' THEN
               1 + (SELECT count(*) FROM jsonb_array_elements(s.rfm->'frequency') c
                    WHERE g.orders >= CAST(c AS bigint)) END,
           CASE WHEN s.rfm ? 'monetary' THEN
               1 + (SELECT count(*) FROM jsonb_array_elements(s.rfm->'monetary') c
                    WHERE g.spend >= CAST(c AS bigint)) END,
           CASE WHEN g.enrolment_days < coalesce(CAST(s.lc->>'new_days' AS int), 30) THEN 'new'
                WHEN coalesce(g.recency_days, g.enrolment_days) < coalesce(CAST(s.lc->>'active_days' AS int), 90)
                    THEN 'active'
                WHEN coalesce(g.recency_days, g.enrolment_days) < coalesce(CAST(s.lc->>'silent_days' AS int), 180)
                    THEN 'silent'
                ELSE 'churned' END,
           g.window_start, now()
    FROM g CROSS JOIN s
    ON CONFLICT (programme_id, member_id) DO UPDATE SET
        qualifying_points = excluded.qualifying_points, spend = excluded.spend, orders = excluded.orders,
        lifetime_spend = excluded.lifetime_spend, lifetime_orders = excluded.lifetime_orders,
        -- Kept from the row as it is now (not as this statement's snapshot saw it) unless
        -- rebuilding: an event that committed while this statement waited for the row's lock
        -- must not lose its increment.
        lifetime_points = CASE WHEN :rebuild THEN excluded.lifetime_points ELSE mf.lifetime_points END,
        first_order_at = CASE WHEN :rebuild THEN excluded.first_order_at ELSE mf.first_order_at END,
        last_order_at = CASE WHEN :rebuild THEN excluded.last_order_at ELSE mf.last_order_at END,
        recency_score = excluded.recency_score,
        frequency_score = excluded.frequency_score, monetary_score = excluded.monetary_score,
        -- excluded.updated_at is now() (Citus takes no function call in DO UPDATE SET).
        lifecycle = excluded.lifecycle, window_start = excluded.window_start, updated_at = excluded.updated_at
    """
# Two statements rather than one "(:m IS NULL OR m.id = :m)": one member's refresh, after every
# event, must keep its plan on the primary key instead of a generic plan over the programme.
# Both type their parameters: Citus plans an INSERT ... SELECT's parts one by one.


def _typed(sql: str) -> str:
    sql = re.sub(r":p\b", "CAST(:p AS bigint)", sql)
    return sql.replace("WHEN :rebuild THEN", "WHEN CAST(:rebuild AS boolean) THEN")


_REFRESH_ALL = text(_typed(_REFRESH_SQL.replace("{member_filter}", "")))
_REFRESH_ONE = text(_typed(_REFRESH_SQL.replace("{member_filter}", "AND m.id = :m")))


_REFRESH_HEAD, _REFRESH_TAIL = _REFRESH_ONE.text.split("INSERT INTO member_facts AS mf", 1)


# The middle of an event: the member's facts refreshed and answered as they are after it (the
# columns of facts.row_to_facts), with the member's tier row taken (FOR UPDATE: the tier is decided on it) and the cap usage rows of the
# rules that may earn taken too, created at 0 if need be (in one order, rule, period, start).
# The facts row is held already (begin_event), so these locks are always taken after it.
_REFRESH_FOR_EVENT = text(
    _REFRESH_HEAD
    + ", up AS (INSERT INTO member_facts AS mf"
    + _REFRESH_TAIL
    + """
        RETURNING mf.*
    ), tl AS (
        SELECT * FROM member_tiers WHERE programme_id = :p AND member_id = :m FOR UPDATE
    ), us AS (
        INSERT INTO earning_rule_usage AS u (programme_id, member_id, rule_id, period, period_start, points)
        SELECT :p, :m, x.r, x.k, x.s, 0
        FROM unnest(CAST(:u_rules AS bigint[]), CAST(:u_periods AS text[]), CAST(:u_starts AS date[])) AS x(r, k, s)
        ORDER BY x.r, x.k, x.s
        ON CONFLICT (programme_id, member_id, rule_id, period, period_start) DO UPDATE SET points = u.points
        RETURNING u.rule_id, u.period, u.points
    )
    SELECT up.qualifying_points, up.spend, up.orders, up.lifetime_points, up.lifetime_spend,
           up.lifetime_orders, up.last_order_at, mm.enrolled_at, up.recency_score, up.frequency_score,
           up.monetary_score, up.lifecycle, tl.tier, up.tags, CAST(mm.attributes AS text) AS attributes,
           up.window_start,
           tl.rank, tl.ladder_version, tl.achieved_at, tl.valid_until, tl.grace_until, tl.pin_kind,
           tl.pin_tier, tl.pin_until, tl.pin_reason, tl.next_assessment_at, tl.member_id AS tier_row,
           (SELECT coalesce(jsonb_agg(jsonb_build_array(us.rule_id, us.period, us.points)), '[]') FROM us)
               AS usage
    FROM up JOIN members mm ON mm.id = up.member_id
    LEFT JOIN tl ON true
    """
)
TIER_ROW = tuple(column.name for column in TIER_COLUMNS)


async def refresh_for_event(
    conn: AsyncConnection,
    programme_id: int,
    member_id: int,
    *,
    now: datetime,
    usage: list[tuple[int, str, date]],
) -> tuple[Any, dict[str, Any] | None, dict[tuple[int, str], int]]:
    """(the refreshed facts row for facts.row_to_facts, the member's tier row or None, points
    already used per (rule id, period) of ``usage``), with the tier and usage rows locked."""
    row = (
        await conn.execute(
            _REFRESH_FOR_EVENT,
            {
                "p": programme_id,
                "now": now,
                "rebuild": False,
                "m": member_id,
                "u_rules": [u[0] for u in usage],
                "u_periods": [u[1] for u in usage],
                "u_starts": [u[2] for u in usage],
            },
        )
    ).one()
    tier_row = None if row.tier_row is None else {k: row._mapping[k] for k in TIER_ROW}
    used = {(rule_id, period): points for rule_id, period, points in row.usage}
    return row, tier_row, used


_APPLY = text(
    "SELECT finished, CAST(results AS text) FROM activity_event_apply(:p, :m, :row_id, :day, :amount, "
    "CAST(:earns AS jsonb), CAST(:tier AS jsonb), :tier_new, CAST(:history AS jsonb), CAST(:events AS jsonb), "
    "CAST(:outcome AS jsonb), CAST(:response AS jsonb))"
)


async def apply_event(
    conn: AsyncConnection,
    programme_id: int,
    member_id: int,
    row_id: int,
    *,
    day: date,
    amount: int | None,
    earns: list[dict[str, Any]],
    tier: dict[str, Any] | None,
    tier_new: bool,
    history: list[dict[str, Any]],
    events: list[dict[str, Any]],
    outcome: dict[str, Any],
    response: Any,
) -> tuple[bool, list[dict[str, Any]]]:
    """activity_event_apply (see activity/sql/activity_events_v1.sql): (finished, one result per
    earn: {"body": the ledger's answer} or {"error_code", "error_detail"})."""
    row = (
        await conn.execute(
            _APPLY,
            {
                "p": programme_id,
                "m": member_id,
                "row_id": row_id,
                "day": day,
                "amount": amount,
                "earns": _json(earns),
                "tier": _json(tier),
                "tier_new": tier_new,
                "history": _json(history),
                "events": _json(events),
                "outcome": _json(outcome),
                "response": _json(response),
            },
        )
    ).one()
    return bool(row[0]), msgspec.json.decode(row[1])


async def refresh_facts(
    conn: AsyncConnection,
    programme_id: int,
    *,
    now: datetime,
    member_id: int | None = None,
    rebuild: bool = False,
) -> int:
    """Recompute window figures, RFM and lifecycle; returns how many members were refreshed."""
    params: dict[str, Any] = {"p": programme_id, "now": now, "rebuild": rebuild}
    if Layout.citus:
        # Citus plans this INSERT ... SELECT's parts on their own and loses the parameters'
        # types there: the values go in as typed literals (ints, an ISO time, a boolean).
        statement = _REFRESH_ALL if member_id is None else _REFRESH_ONE
        sql = (
            statement.text.replace("CAST(:p AS bigint)", f"CAST({int(programme_id)} AS bigint)")
            .replace("CAST(:now AS timestamptz)", f"CAST('{now.isoformat()}' AS timestamptz)")
            .replace("CAST(:rebuild AS boolean)", "true" if rebuild else "false")
            .replace("m.id = :m", f"m.id = {int(member_id or 0)}")
        )
        result = await conn.execute(text(sql))
    elif member_id is None:
        result = await conn.execute(_REFRESH_ALL, params)
    else:
        result = await conn.execute(_REFRESH_ONE, {**params, "m": member_id})
    return int(result.rowcount or 0)


async def programmes_with_members(conn: AsyncConnection) -> list[int]:
    rows = await conn.execute(text("SELECT DISTINCT programme_id FROM members ORDER BY programme_id"))
    return [r[0] for r in rows]


async def facts_row(conn: AsyncConnection, programme_id: int, member_id: int) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(
                "SELECT window_start, first_order_at, last_order_at, updated_at FROM member_facts "
                "WHERE programme_id = :p AND member_id = :m"
            ),
            {"p": programme_id, "m": member_id},
        )
    ).first()
    return dict(row._mapping) if row else None


async def tags(conn: AsyncConnection, programme_id: int, member_id: int) -> list[str]:
    found = await conn.scalar(
        text("SELECT tags FROM member_facts WHERE programme_id = :p AND member_id = :m"),
        {"p": programme_id, "m": member_id},
    )
    return list(found or [])


# A member's tags on Citus, where an upsert's DO UPDATE may hold no subquery: the row is made
# if need be and taken, the new set computed (in SQL, so that it sorts as the upsert does), then
# stored.
_TAGS_ROW = text(
    "INSERT INTO member_facts (programme_id, member_id) VALUES (:p, :m) ON CONFLICT (programme_id, member_id) "
    "DO NOTHING"
)
_TAGS_HELD = text("SELECT tags FROM member_facts WHERE programme_id = :p AND member_id = :m FOR UPDATE")
_TAGS_NEW = text(
    "SELECT ARRAY(SELECT DISTINCT x FROM unnest(CAST(:old AS text[]) || CAST(:add AS text[])) x "
    "WHERE x <> ALL (CAST(:rm AS text[])) ORDER BY x)"
)
_TAGS_STORE = text(
    "UPDATE member_facts SET tags = CAST(:tags AS text[]), updated_at = now() "
    "WHERE programme_id = :p AND member_id = :m"
)


async def update_tags(
    conn: AsyncConnection, programme_id: int, member_id: int, add: list[str], remove: list[str]
) -> list[str]:
    if Layout.citus:
        params = {"p": programme_id, "m": member_id}
        await conn.execute(_TAGS_ROW, params)
        old = (await conn.execute(_TAGS_HELD, params)).scalar_one()
        tags = list((await conn.execute(_TAGS_NEW, {"old": old, "add": add, "rm": remove})).scalar_one())
        await conn.execute(_TAGS_STORE, {**params, "tags": tags})
        return tags
    return list(
        (
            await conn.execute(
                text(
                    """
                    INSERT INTO member_facts (programme_id, member_id, tags)
                    VALUES (:p, :m, ARRAY(SELECT DISTINCT x FROM unnest(CAST(:add AS text[])) x
                                          WHERE x <> ALL (CAST(:rm AS text[])) ORDER BY x))
                    ON CONFLICT (programme_id, member_id) DO UPDATE SET
                        tags = ARRAY(SELECT DISTINCT x FROM unnest(member_facts.tags || CAST(:add AS text[])) x
                                     WHERE x <> ALL (CAST(:rm AS text[])) ORDER BY x),
                        updated_at = now()
                    RETURNING tags
                    """
                ),
                {"p": programme_id, "m": member_id, "add": add, "rm": remove},
            )
        ).scalar_one()
    )


# Earning rules -----------------------------------------------------------------------------

_RULE_COLUMNS = (
    "id, code, name, event_type, condition, event_filter, formula, cap_per_day, cap_per_month, budget, "
    "pending_days, expiry, qualifying, priority, active, starts_at, ends_at, created_at, updated_at"
)


async def budget_exists(conn: AsyncConnection, programme_id: int, code: str) -> bool:
    found = await conn.execute(
        text("SELECT 1 FROM budgets WHERE programme_id = :p AND code = :c"), {"p": programme_id, "c": code}
    )
    return found.first() is not None


async def insert_rule(
    conn: AsyncConnection, programme_id: int, values: dict[str, Any]
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(
                f"""
                INSERT INTO earning_rules (programme_id, code, name, event_type, condition, event_filter, formula,
                    cap_per_day, cap_per_month, budget, pending_days, expiry, qualifying, priority,
                    starts_at, ends_at)
                VALUES (:p, :code, :name, :event_type, CAST(:condition AS jsonb), CAST(:event_filter AS jsonb),
                    CAST(:formula AS jsonb), :cap_per_day, :cap_per_month, :budget, :pending_days,
                    CAST(:expiry AS jsonb), :qualifying, :priority, :starts_at, :ends_at)
                ON CONFLICT (programme_id, code) DO NOTHING
                RETURNING {_RULE_COLUMNS}
                """
            ),
            _rule_params(programme_id, values),
        )
    ).first()
    return dict(row._mapping) if row else None


def _rule_params(programme_id: int, values: dict[str, Any]) -> dict[str, Any]:
    out = {"p": programme_id, **values}
    for key in ("condition", "event_filter", "formula", "expiry"):
        out[key] = _json(values[key])
    return out


async def update_rule(
    conn: AsyncConnection, programme_id: int, values: dict[str, Any]
) -> dict[str, Any] | None:
    row = (
        await conn.execute(
            text(
                f"""
                UPDATE earning_rules SET name = :name, condition = CAST(:condition AS jsonb),
                    event_filter = CAST(:event_filter AS jsonb), formula = CAST(:formula AS jsonb),
                    cap_per_day = :cap_per_day, cap_per_month = :cap_per_month, budget = :budget,
                    pending_days = :pending_days, expiry = CAST(:expiry AS jsonb), qualifying = :qualifying,
                    priority = :priority, active = :active, starts_at = :starts_at, ends_at = :ends_at,
                    updated_at = now()
                WHERE programme_id = :p AND code = :code
                RETURNING {_RULE_COLUMNS}
                """
            ),
            _rule_params(programme_id, values),
        )
    ).first()
    return dict(row._mapping) if row else None


async def rule(
    conn: AsyncConnection, programme_id: int, code: str, *, lock: bool = False
) -> dict[str, Any] | None:
    suffix = " FOR UPDATE" if lock else ""
    row = (
        await conn.execute(
            text(f"SELECT {_RULE_COLUMNS} FROM earning_rules WHERE programme_id = :p AND code = :c{suffix}"),
            {"p": programme_id, "c": code},
        )
    ).first()
    return dict(row._mapping) if row else None


async def rules(
    conn: AsyncConnection, programme_id: int, event_type: str | None = None
) -> list[dict[str, Any]]:
    rows = await conn.execute(
        text(
            f"""
            SELECT {_RULE_COLUMNS} FROM earning_rules
            WHERE programme_id = :p AND (CAST(:t AS text) IS NULL OR (event_type = :t AND active))
            ORDER BY priority, code
            """
        ),
        {"p": programme_id, "t": event_type},
    )
    return [dict(r._mapping) for r in rows]


# Imports -----------------------------------------------------------------------------------


async def import_events(conn: AsyncConnection, programme_id: int, rows: list[dict[str, Any]], tz: str) -> int:
    """Inserts past events in one statement (duplicates by event id skipped) and adds their orders
    and spend to the activity days; returns how many events were new."""
    columns = ("member_id", "event_id", "type", "occurred_at", "order_ref", "amount", "currency", "channel")
    params: dict[str, Any] = {c: [r[c] for r in rows] for c in columns}
    params["payload"] = [_json(r["payload"]) for r in rows]
    result = await conn.execute(
        text(
            """
            WITH src AS (
                SELECT * FROM unnest(CAST(:member_id AS bigint[]), CAST(:event_id AS text[]),
                                     CAST(:type AS text[]), CAST(:occurred_at AS timestamptz[]),
                                     CAST(:order_ref AS text[]), CAST(:amount AS bigint[]),
                                     CAST(:currency AS text[]), CAST(:channel AS text[]), CAST(:payload AS jsonb[]))
                    AS s(member_id, event_id, type, occurred_at, order_ref, amount, currency, channel, payload)
            ), ins AS (
                INSERT INTO member_events (programme_id, member_id, event_id, type, occurred_at, order_ref, amount,
                                           currency, channel, payload, response, outcome)
                SELECT :p, member_id, event_id, type, occurred_at, order_ref, amount, currency, channel, payload,
                       jsonb_build_object('imported', true), '{}'
                FROM src
                ON CONFLICT (programme_id, event_id) DO NOTHING
                RETURNING member_id, type, occurred_at, amount
            ), days AS (
                INSERT INTO member_activity_days (programme_id, member_id, day, orders, spend, qualifying_points)
                SELECT :p, member_id, CAST(occurred_at AT TIME ZONE :tz AS date),
                       count(*) FILTER (WHERE type = 'order_completed'),
                       coalesce(sum(CASE type WHEN 'order_completed' THEN amount WHEN 'order_refunded' THEN amount END),
                                0),
                       0
                FROM ins WHERE type IN ('order_completed', 'order_refunded')
                GROUP BY 1, 2, 3
                ON CONFLICT (programme_id, member_id, day) DO UPDATE SET
                    orders = member_activity_days.orders + excluded.orders,
                    spend = member_activity_days.spend + excluded.spend
            )
            SELECT count(*) FROM ins
            """
        ),
        {"p": programme_id, "tz": tz, **params},
    )
    return int(result.scalar_one())


async def members_by_external(
    conn: AsyncConnection, programme_id: int, external_ids: list[str]
) -> dict[str, int]:
    rows = await conn.execute(
        text(
            "SELECT external_id, id FROM members WHERE programme_id = :p AND external_id = ANY (CAST(:e AS text[]))"
        ),
        {"p": programme_id, "e": external_ids},
    )
    return {r[0]: r[1] for r in rows}


# The optimistic event path ------------------------------------------------------------------
#
# An event in two autocommit round trips: read_for_event reads, without locks, everything its
# plan needs, with the member's facts as the refresh would leave them once this event's order
# is counted; write_event (activity_event_write) stores the event on that plan, or refuses
# with stale when a row the plan read has changed since.


def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """A :named statement as the driver takes it ($1, $2 ...) and the names in that order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return re.sub(r"(?<![:\w]):([a-z_]\w*)", number, sql), tuple(names)


_DAYS_JOIN = "JOIN member_activity_days d ON d.programme_id = :p AND d.member_id = m.member_id"
_FACTS_INSERT = "INSERT INTO member_facts AS mf ("
_refresh_head, _refresh_insert = _REFRESH_SQL.replace(
    "{member_filter}", "AND m.external_id = :external"
).split(_FACTS_INSERT, 1)
_refresh_columns, _refresh_select = _refresh_insert.split(")", 1)
_refresh_select = _refresh_select.split("ON CONFLICT", 1)[0]
assert _DAYS_JOIN in _refresh_head
# The refresh as it would run after this event's begin: its order's activity day added (a
# virtual row beside the stored ones) and its time taken into first and last order.
_READ_REFRESH = (
    _refresh_head.replace(
        _DAYS_JOIN,
        """JOIN (
            SELECT member_id, day, orders, spend, qualifying_points FROM member_activity_days
            WHERE programme_id = :p AND member_id IN (SELECT member_id FROM m)
            UNION ALL
            SELECT m.member_id, CAST(:day AS date), 1, CAST(:spend AS bigint), 0 FROM m
            WHERE CAST(:add_day AS boolean)
        ) d ON d.member_id = m.member_id""",
    )
    .replace(
        "ELSE old.first_order_at END", "ELSE least(old.first_order_at, CAST(:order_at AS timestamptz)) END"
    )
    .replace(
        "ELSE old.last_order_at END", "ELSE greatest(old.last_order_at, CAST(:order_at AS timestamptz)) END"
    )
)
assert _READ_REFRESH.count(":order_at") == 2
_READ_SQL = (
    _READ_REFRESH
    + f", v({_refresh_columns}) AS ({_refresh_select})"
    + """
    SELECT p.config_version, mm.id AS member_id, mm.enrolled_at, CAST(mm.attributes AS text) AS attributes,
           CAST(ev.payload AS text) AS stored_payload, CAST(ev.response AS text) AS stored_response,
           ev.id IS NOT NULL AS stored,
           vf.qualifying_points, vf.spend, vf.orders, vf.lifetime_points, vf.lifetime_spend,
           vf.lifetime_orders, vf.last_order_at, vf.recency_score, vf.frequency_score, vf.monetary_score,
           vf.lifecycle, vf.window_start,
           CAST(to_jsonb(v) AS text) AS facts_values,
           old.tags, CAST(old.xmin AS text)::bigint AS facts_xmin,
           tl.tier, tl.rank, tl.ladder_version, tl.achieved_at, tl.valid_until, tl.grace_until, tl.pin_kind,
           tl.pin_tier, tl.pin_until, tl.pin_reason, tl.next_assessment_at, tl.member_id AS tier_row,
           CAST(tl.xmin AS text)::bigint AS tier_xmin,
           (SELECT coalesce(jsonb_agg(jsonb_build_array(u.rule_id, u.period, u.points)), '[]')
            FROM earning_rule_usage u
            JOIN unnest(CAST(:u_rules AS bigint[]), CAST(:u_periods AS text[]), CAST(:u_starts AS date[]))
                AS x(r, k, s) ON u.rule_id = x.r AND u.period = x.k AND u.period_start = x.s
            WHERE u.programme_id = :p AND u.member_id = mm.id)::text AS usage
    FROM programmes p
    LEFT JOIN members mm ON mm.programme_id = p.id AND mm.external_id = :external
    LEFT JOIN member_events ev ON ev.programme_id = p.id AND ev.event_id = :event_id
    LEFT JOIN v ON v.member_id = mm.id
    -- As the columns type them (sums are numeric until stored).
    LEFT JOIN LATERAL jsonb_populate_record(NULL::member_facts, to_jsonb(v)) vf ON true
    LEFT JOIN member_facts old ON old.programme_id = p.id AND old.member_id = mm.id
    LEFT JOIN member_tiers tl ON tl.programme_id = p.id AND tl.member_id = mm.id
    WHERE p.id = :p
    """
)
_READ_FOR_EVENT, _READ_NAMES = _positional(_READ_SQL)


def _citus_read(sql: str) -> str:
    """The read's Citus form: every member-scoped table filtered by the member's key (its
    distribution column there), so that the whole read goes to the member's shard."""
    for plain, routed, count in (
        ("AND m.external_id = :external", "AND m.external_id = :external AND m.id = :key", 1),
        ("member_id IN (SELECT member_id FROM m)", "member_id = :key", 1),
        (
            "WHERE CAST(:rebuild AS boolean) AND e.programme_id = :p",
            "WHERE CAST(:rebuild AS boolean) AND e.programme_id = :p AND e.member_id = :key",
            2,
        ),
        (
            "old.programme_id = :p AND old.member_id = m.member_id",
            "old.programme_id = :p AND old.member_id = m.member_id AND old.member_id = :key",
            1,
        ),
        ("mm.external_id = :external", "mm.external_id = :external AND mm.id = :key", 1),
        ("ev.event_id = :event_id", "ev.event_id = :event_id AND ev.member_id = :key", 1),
        ("old.member_id = mm.id", "old.member_id = mm.id AND old.member_id = :key", 1),
        ("tl.member_id = mm.id", "tl.member_id = mm.id AND tl.member_id = :key", 1),
        ("u.member_id = mm.id", "u.member_id = mm.id AND u.member_id = :key", 1),
    ):
        assert sql.count(plain) == count, plain
        sql = sql.replace(plain, routed)
    return sql


_READ_FOR_EVENT_CITUS, _READ_NAMES_CITUS = _positional(_citus_read(_READ_SQL))


async def read_for_event(
    conn: asyncpg.Connection,
    programme_id: int,
    external_id: str,
    event_id: str,
    *,
    now: datetime,
    day: date,
    order_at: datetime | None,
    spend: int | None,
    usage: list[tuple[int, str, date]],
) -> asyncpg.Record:
    """One autocommit read, no locks: the programme's config version; the member (member_id
    None: no such member); the stored event of this id (stored, stored_payload, stored_response);
    the facts as they will be once the event's order is counted (facts.row_to_facts columns,
    and facts_values, the member_facts columns to store) with the facts row's xmin; the tier row
    (the TIER_COLUMNS, tier_row None without one) with its xmin; the points used per (rule,
    period) of ``usage`` (JSON)."""
    values = {
        "p": programme_id,
        "external": external_id,
        "event_id": event_id,
        "now": now,
        "rebuild": False,
        "day": day,
        "spend": spend or 0,
        "add_day": spend is not None,
        "order_at": order_at,
        "u_rules": [u[0] for u in usage],
        "u_periods": [u[1] for u in usage],
        "u_starts": [u[2] for u in usage],
    }
    sql, names = _READ_FOR_EVENT, _READ_NAMES
    if Layout.citus:
        values["key"] = member_key(programme_id, external_id)
        sql, names = _READ_FOR_EVENT_CITUS, _READ_NAMES_CITUS
    row = await conn.fetchrow(sql, *(values[name] for name in names))
    assert row is not None  # the caller's programme exists
    return row


class StaleRead(Exception):
    """A row an optimistic event read changed before its write: read and plan again."""


class NeedsTransaction(Exception):
    """The ledger did not pay an earn as planned: the event goes the transactional way."""


_WRITE_EVENT = (
    "SELECT replayed, CAST(results AS text) FROM activity_event_write($1, $2, $3, $4, $5, "
    "CAST($6 AS jsonb), CAST($7 AS jsonb), $8, $9, $10, CAST($11 AS jsonb), $12, CAST($13 AS jsonb), "
    "CAST($14 AS jsonb), $15, CAST($16 AS jsonb), CAST($17 AS jsonb), CAST($18 AS jsonb), CAST($19 AS jsonb))"
)


async def write_event(
    conn: asyncpg.Connection | GroupCommitter,
    programme_id: int,
    member_id: int,
    *,
    config_version: int,
    facts_xmin: int | None,
    tier_xmin: int | None,
    event: dict[str, Any],
    facts_values: str,
    day: date,
    spend: int | None,
    usage: list[tuple[int, str, date]],
    amount: int | None,
    earns: list[dict[str, Any]],
    tier: dict[str, Any] | None,
    tier_new: bool,
    history: list[dict[str, Any]],
    events: list[dict[str, Any]],
    outcome: dict[str, Any],
    response: Any,
) -> tuple[bool, list[dict[str, Any]]]:
    """activity_event_write in autocommit: (replayed, one result per earn as apply_event's).
    Raises StaleRead or NeedsTransaction, having written nothing.

    On a connection it is one call of its own; through the group committer it joins the
    process's next batch with the ledger's postings (ledger/group_commit.py), one commit for
    all, and returns once that committed."""
    # activity_event_write's arguments in order: JSON values as the batch sends them.
    params: dict[str, Any] = {
        "p_programme": programme_id,
        "p_member": member_id,
        "p_config_version": config_version,
        "p_facts_xmin": facts_xmin,
        "p_tier_xmin": tier_xmin,
        "p_event": event,
        "p_facts": msgspec.Raw(facts_values.encode()),
        "p_day": day,
        "p_spend": spend or 0,
        "p_add_day": spend is not None,
        "p_usage": [[rule, period, start.isoformat()] for rule, period, start in usage],
        "p_amount": amount,
        "p_earns": earns,
        "p_tier": tier,
        "p_tier_new": tier_new,
        "p_history": history,
        "p_events": events,
        "p_outcome": outcome,
        "p_response": response,
    }

    async def alone(driver: Any) -> Posted:
        jsonb = _WRITE_EVENT_JSONB
        args = [
            facts_values if name == "p_facts" else _json(value) if name in jsonb else value
            for name, value in params.items()
        ]
        row = await driver.fetchrow(_WRITE_EVENT, *args)
        assert row is not None
        return Posted(replayed=bool(row[0]), body=b"null" if row[1] is None else row[1].encode())

    try:
        if isinstance(conn, GroupCommitter):
            posted = await conn.post(EVENT_WRITE, params, alone=alone, weight=1 + 2 * len(earns))
        else:
            posted = await alone(conn)
    except (asyncpg.PostgresError, Refused) as exc:
        if exc.sqlstate == "LYSTL":
            raise StaleRead(str(exc)) from None
        if exc.sqlstate == "LYTXN":
            raise NeedsTransaction(str(exc)) from None
        raise
    results = msgspec.json.decode(posted.body)
    return posted.replayed, [] if results is None else results


# The jsonb arguments of activity_event_write (cast from text on a single call).
_WRITE_EVENT_JSONB = frozenset(
    {"p_event", "p_usage", "p_earns", "p_tier", "p_history", "p_events", "p_outcome", "p_response"}
)

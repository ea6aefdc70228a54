"""Replay: what a draft set of earning rules would have awarded over the events of a past
period, beside what the rules in force awarded. Nothing is written: the computation runs in a
READ ONLY transaction, and only the job's progress is committed, apart from it.

How an event is replayed, against the live path (service.record):
- event facts (type, time, amount, channel, currency, items) are the recorded ones, and the
  draft's time frame, event filter, formula and per-member day/month caps apply exactly as live,
  in the order the events were recorded (member_events.id);
- the condition reads the member's facts and tier as they are *now* (member_facts, member_tiers),
  compiled to SQL by rules/sql.py: facts at event time are not kept. A condition on stable facts
  (tags, attributes, tier) agrees with the live path; one on counts may differ;
- the member multiplier of benefits is not applied (x1), and budgets are taken as unlimited:
  the draft's cost is what it would ask of its budgets;
- refunds keep the clawback that was recorded (draft and actual alike).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Annotated, Any

import msgspec
from msgspec import Meta
from sqlalchemy import Text, and_, cast, func, literal, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.activity import core
from loyalty.activity.facts import fact_columns, facts_from
from loyalty.activity.models import MemberEvent
from loyalty.activity.schemas import EarningRuleIn
from loyalty.auth.core import Principal
from loyalty.errors import InvalidInput
from loyalty.members.models import Member
from loyalty.rules import parse_rule, to_sql

MAX_DAYS = 400
CHUNK = 20_000
events = MemberEvent.__table__
members = Member.__table__

Progress = Callable[[int, int], Awaitable[None]]


class ReplayIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    rules: Annotated[list[EarningRuleIn], Meta(max_length=100)]
    since: datetime
    until: datetime
    top: Annotated[int, Meta(ge=1, le=100)] = 10


class Figure(msgspec.Struct, kw_only=True):
    """Points and their cost in micros of money (points x the budget's unit cost)."""

    draft_points: int = 0
    actual_points: int = 0
    draft_micros: int = 0
    actual_micros: int = 0

    @property
    def delta_points(self) -> int:
        return self.draft_points - self.actual_points


class DayRow(msgspec.Struct, kw_only=True):
    day: date
    draft_points: int
    actual_points: int
    draft_micros: int
    actual_micros: int


class RuleRow(msgspec.Struct, kw_only=True):
    code: str
    in_draft: bool
    events: int  # events the draft rule awarded points for (0 for a rule not in the draft)
    draft_points: int
    actual_points: int
    draft_micros: int
    actual_micros: int


class MemberDelta(msgspec.Struct, kw_only=True):
    member_id: str
    draft_points: int
    actual_points: int
    delta_points: int


class ReplayResult(msgspec.Struct, kw_only=True):
    since: datetime
    until: datetime
    events: int
    members: int
    draft_points: int
    actual_points: int
    delta_points: int
    draft_micros: int
    actual_micros: int
    delta_micros: int
    days: list[DayRow]
    rules: list[RuleRow]
    gainers: list[MemberDelta]
    losers: list[MemberDelta]
    seconds: float
    assumptions: list[str] = field(default_factory=list)


ASSUMPTIONS = [
    "conditions read members' facts and tiers as they are now",
    "benefit multipliers are not applied to the draft",
    "budgets are taken as unlimited for the draft",
    "refund clawbacks are the recorded ones",
]


@dataclass(slots=True)
class _Draft:
    code: str
    event_type: str
    event_filter: dict[str, Any]
    formula: core.Formula
    cap_per_day: int | None
    cap_per_month: int | None
    starts_at: datetime | None
    ends_at: datetime | None
    condition: Any
    unit_cost: int = 0


async def validate(conn: AsyncConnection, who: Principal, req: ReplayIn) -> list[_Draft]:
    """Each draft rule is checked as POST /v1/earning-rules checks it; errors name rules[i].field."""
    from loyalty.activity.earning_rules import check_rule  # the one validation of a rule

    if req.since.tzinfo is None or req.until.tzinfo is None:
        raise InvalidInput("since" if req.since.tzinfo is None else "until", "must carry a time zone offset")
    if req.until <= req.since:
        raise InvalidInput("until", "must be after since")
    if req.until - req.since > timedelta(days=MAX_DAYS):
        raise InvalidInput("until", f"the period is at most {MAX_DAYS} days")
    costs = await _unit_costs(conn, who.programme_id)
    drafts: list[tuple[int, str, _Draft]] = []
    seen: set[str] = set()
    for index, rule in enumerate(req.rules):
        if rule.code in seen:
            raise InvalidInput(f"rules[{index}].code", "repeats another rule of the draft")
        seen.add(rule.code)
        values = msgspec.to_builtins(rule, builtin_types=(datetime,))
        try:
            await check_rule(conn, who, values)
        except InvalidInput as exc:
            raise InvalidInput(f"rules[{index}].{exc.field}", exc.reason) from None
        draft = _Draft(
            code=rule.code,
            event_type=rule.event_type,
            event_filter=rule.event_filter,
            formula=core.parse_formula(rule.formula),
            cap_per_day=rule.cap_per_day,
            cap_per_month=rule.cap_per_month,
            starts_at=rule.starts_at,
            ends_at=rule.ends_at,
            condition=parse_rule(rule.condition, path="condition"),
            unit_cost=costs.get(rule.budget, 0),
        )
        drafts.append((rule.priority, rule.code, draft))
    # The live path applies an event's rules in (priority, code) order (repository.rules).
    return [draft for _, _, draft in sorted(drafts, key=lambda d: (d[0], d[1]))]


async def _unit_costs(conn: AsyncConnection, programme_id: int) -> dict[str, int]:
    rows = await conn.execute(
        text("SELECT code, unit_cost_micros FROM budgets WHERE programme_id = :p"), {"p": programme_id}
    )
    return {r.code: int(r.unit_cost_micros) for r in rows}


async def count_events(conn: AsyncConnection, programme_id: int, since: datetime, until: datetime) -> int:
    row = await conn.execute(
        text(
            "SELECT count(*) FROM member_events WHERE programme_id = :p"
            " AND occurred_at >= :s AND occurred_at < :u"
        ),
        {"p": programme_id, "s": since, "u": until},
    )
    return int(row.scalar_one())


def _events_select(programme_id: int, drafts: list[_Draft], since: datetime, until: datetime, tz: str) -> Any:
    """One pass over the period's events with each draft condition as a boolean column."""
    now = datetime.now(since.tzinfo)
    columns = fact_columns(now)
    conds = [to_sql(d.condition, columns).label(f"c{k}") for k, d in enumerate(drafts)]
    day = cast(func.timezone(literal(tz, Text), events.c.occurred_at), Text)
    return (
        select(
            events.c.member_id,
            members.c.external_id,
            events.c.type,
            events.c.occurred_at,
            func.substr(day, 1, 10).label("day"),
            events.c.amount,
            events.c.currency,
            events.c.channel,
            events.c.payload["items"].label("items"),
            events.c.points,
            *conds,
        )
        .select_from(
            events.join(
                facts_from(),
                and_(members.c.programme_id == events.c.programme_id, members.c.id == events.c.member_id),
            )
        )
        .where(
            events.c.programme_id == programme_id,
            events.c.occurred_at >= since,
            events.c.occurred_at < until,
        )
        .order_by(events.c.member_id, events.c.id)
    )


async def _actual_by_rule(
    conn: AsyncConnection, programme_id: int, since: datetime, until: datetime, tz: str
) -> list[Any]:
    """What the rules in force awarded, per local day and rule, from each event's stored answer."""
    rows = await conn.execute(
        text(
            """
            SELECT (e.occurred_at AT TIME ZONE :tz)::date AS day, r->>'code' AS code,
                   sum((r->>'points')::bigint)::bigint AS points, coalesce(b.unit_cost_micros, 0) AS cost
            FROM member_events e
            CROSS JOIN LATERAL jsonb_array_elements(coalesce(e.response->'rules', '[]'::jsonb)) r
            LEFT JOIN earning_rules er ON er.programme_id = e.programme_id AND er.code = r->>'code'
            LEFT JOIN budgets b ON b.programme_id = e.programme_id AND b.code = er.budget
            WHERE e.programme_id = :p AND e.occurred_at >= :s AND e.occurred_at < :u
              AND e.points <> 0 AND (r->>'points')::bigint <> 0
            GROUP BY 1, 2, 4
            """
        ),
        {"p": programme_id, "s": since, "u": until, "tz": tz},
    )
    return list(rows)


async def run_replay(
    conn: AsyncConnection, who: Principal, req: ReplayIn, *, progress: Progress | None = None
) -> ReplayResult:
    """The replay, in the caller's transaction, which it makes READ ONLY (so it must be the
    transaction's first statement's caller: nothing may have been written in it)."""
    started = time.perf_counter()
    await conn.execute(text("SET TRANSACTION READ ONLY"))
    drafts = await validate(conn, who, req)
    tz = who.timezone or "UTC"
    total = await count_events(conn, who.programme_id, req.since, req.until)
    by_type: dict[str, list[int]] = defaultdict(list)
    for k, d in enumerate(drafts):
        by_type[d.event_type].append(k)

    day_draft: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # points, micros
    rule_draft = [[0, 0, 0] for _ in drafts]  # events, points, micros
    member_draft: dict[str, int] = defaultdict(int)
    member_actual: dict[str, int] = defaultdict(int)
    used: dict[tuple[int, str], int] = {}
    current = None
    done = 0
    refund_points: dict[str, int] = defaultdict(int)  # day -> recorded clawback points

    stream = await conn.stream(_events_select(who.programme_id, drafts, req.since, req.until, tz))
    async for chunk in stream.partitions(CHUNK):
        for row in chunk:
            if row.member_id != current:
                current = row.member_id
                used.clear()  # caps are per member
            ext = row.external_id
            member_actual[ext] += row.points
            if row.type == "order_refunded":
                member_draft[ext] += row.points
                refund_points[row.day] += row.points
                continue
            ks = by_type.get(row.type)
            if not ks:
                continue
            event_view = None
            for k in ks:
                d = drafts[k]
                if not row._mapping[f"c{k}"]:
                    continue
                if d.starts_at and row.occurred_at < d.starts_at:
                    continue
                if d.ends_at and row.occurred_at >= d.ends_at:
                    continue
                if d.event_filter:
                    if event_view is None:
                        event_view = {
                            "amount": row.amount,
                            "channel": row.channel,
                            "currency": row.currency,
                            "items": row.items,
                        }
                    if core.filter_miss(d.event_filter, event_view):
                        continue
                wanted = core.points_for(d.formula, row.amount)
                if wanted <= 0:
                    continue
                caps: list[tuple[int | None, int]] = []
                keys = []
                if d.cap_per_day is not None:
                    key = (k, row.day)
                    keys.append(key)
                    caps.append((d.cap_per_day, used.get(key, 0)))
                if d.cap_per_month is not None:
                    key = (k, row.day[:7])
                    keys.append(key)
                    caps.append((d.cap_per_month, used.get(key, 0)))
                grant = core.capped(wanted, caps) if caps else wanted
                if grant <= 0:
                    continue
                for key in keys:
                    used[key] = used.get(key, 0) + grant
                micros = grant * d.unit_cost
                member_draft[ext] += grant
                cell = day_draft[row.day]
                cell[0] += grant
                cell[1] += micros
                r = rule_draft[k]
                r[0] += 1
                r[1] += grant
                r[2] += micros
        done += len(chunk)
        if progress is not None:
            await progress(done, total)

    actual = await _actual_by_rule(conn, who.programme_id, req.since, req.until, tz)
    days: dict[str, Figure] = defaultdict(Figure)
    rules: dict[str, RuleRow] = {}
    for k, d in enumerate(drafts):
        rules[d.code] = RuleRow(
            code=d.code, in_draft=True, events=rule_draft[k][0], draft_points=rule_draft[k][1],
            actual_points=0, draft_micros=rule_draft[k][2], actual_micros=0,
        )  # fmt: skip
    for day, (points, micros) in day_draft.items():
        days[day].draft_points += points
        days[day].draft_micros += micros
    for row in actual:
        key = row.day.isoformat()
        days[key].actual_points += row.points
        days[key].actual_micros += row.points * row.cost
        rule = rules.setdefault(
            row.code,
            RuleRow(code=row.code, in_draft=False, events=0, draft_points=0, actual_points=0,
                    draft_micros=0, actual_micros=0),
        )  # fmt: skip
        rule.actual_points += row.points
        rule.actual_micros += row.points * row.cost
    for day, points in refund_points.items():
        days[day].draft_points += points
        days[day].actual_points += points
    deltas = [
        MemberDelta(
            member_id=m, draft_points=member_draft[m], actual_points=a, delta_points=member_draft[m] - a
        )
        for m, a in member_actual.items()
    ]
    gainers = sorted((x for x in deltas if x.delta_points > 0), key=lambda x: (-x.delta_points, x.member_id))
    losers = sorted((x for x in deltas if x.delta_points < 0), key=lambda x: (x.delta_points, x.member_id))
    draft_points = sum(member_draft.values())
    actual_points = sum(member_actual.values())
    draft_micros = sum(f.draft_micros for f in days.values())
    actual_micros = sum(f.actual_micros for f in days.values())
    return ReplayResult(
        since=req.since,
        until=req.until,
        events=done,
        members=len(member_actual),
        draft_points=draft_points,
        actual_points=actual_points,
        delta_points=draft_points - actual_points,
        draft_micros=draft_micros,
        actual_micros=actual_micros,
        delta_micros=draft_micros - actual_micros,
        days=[
            DayRow(
                day=date.fromisoformat(k),
                draft_points=f.draft_points,
                actual_points=f.actual_points,
                draft_micros=f.draft_micros,
                actual_micros=f.actual_micros,
            )
            for k, f in sorted(days.items())
        ],  # fmt: skip
        rules=sorted(rules.values(), key=lambda r: r.code),
        gainers=gainers[: req.top],
        losers=losers[: req.top],
        seconds=round(time.perf_counter() - started, 3),
        assumptions=list(ASSUMPTIONS),
    )

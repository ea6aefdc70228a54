"""Report use cases: the rollup step the worker runs, and the dashboard's figures.

Every read comes from the rollup tables (reports/models.py) through index range scans; the
figures are those of the ledger up to ``rolled_up_to`` (the job's watermark, seconds behind).
Functions take a connection or a session and never commit.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import date, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.errors import NotFound
from loyalty.reports import core
from loyalty.reports import repository as repo
from loyalty.reports import schemas as s
from loyalty.reports.repository import Executor

# Rollup ---------------------------------------------------------------------------------


async def rollup_step(conn: Executor, margin_seconds: float = 1.0) -> tuple[s.RollupResult, bool]:
    """Rolls up the next slice of the ledger (at most a day of it) and the pending deltas, and
    moves the watermark, all in the caller's transaction. Returns the result and whether the
    rollup has caught up with the commit horizon. Safe to run twice or concurrently: runs are
    serialised by an advisory lock and each slice is counted under the watermark it moves."""
    await repo.lock_rollup(conn)
    horizon = await repo.commit_horizon(conn, margin_seconds)
    lo = await repo.watermark(conn)
    if lo is None:
        first = await repo.first_ledger_row(conn)
        lo = horizon if first is None else min(first, horizon)
    transactions = 0
    hi = lo
    if lo < horizon:
        hi = await repo.next_bound(conn, lo, horizon)
        transactions = await repo.rollup_ledger(conn, lo, hi)
        await repo.prune_active_days(conn, hi)
    await repo.set_watermark(conn, hi)
    limit = 50_000
    deltas = await repo.fold_deltas(conn, limit)
    done = hi >= horizon and deltas < limit
    return s.RollupResult(transactions=transactions, deltas=deltas, rolled_up_to=hi), done


async def refresh_forecast(conn: Executor) -> int:
    return await repo.refresh_expiry_forecast(conn)


# Reads ----------------------------------------------------------------------------------


async def _programme(conn: Executor, programme_id: int) -> dict[str, Any]:
    found = await repo.programme(conn, programme_id)
    if found is None:
        raise NotFound("No such programme.", code="programme_not_found", extra={"programme_id": programme_id})
    return found


async def _period(
    conn: Executor, programme: dict[str, Any], since: date | None, until: date | None
) -> tuple[date, date]:
    return core.period(since, until, await repo.today(conn, programme["timezone"]))


_FLOW_FIELDS = {kind: (f"{kind}_points", f"{kind}_micros") for kind in ("issued", "redeemed", "expired")}
_FLOW_FIELDS |= {"clawed_back": ("clawed_back_points", "clawed_back_micros")}
_FLOW_FIELDS |= {"adjusted": ("adjusted_points", "adjusted_micros")}


async def daily_flows(
    conn: Executor, programme_id: int, since: date | None = None, until: date | None = None
) -> s.DailyFlows:
    """Points and money issued, redeemed, expired, clawed back and adjusted, per local day
    (every day of the period, zeros included)."""
    programme = await _programme(conn, programme_id)
    since, until = await _period(conn, programme, since, until)
    by_day: dict[date, s.FlowDay] = {day: s.FlowDay(day=day) for day in core.days(since, until)}
    totals = s.FlowFigures()
    for row in await repo.flows(conn, programme_id, since, until):
        points_field, micros_field = _FLOW_FIELDS[row["kind"]]
        for target in (by_day[row["day"]], totals):
            setattr(target, points_field, getattr(target, points_field) + int(row["points"]))
            setattr(target, micros_field, getattr(target, micros_field) + int(row["money_micros"]))
    return s.DailyFlows(
        currency=programme["currency"],
        since=since,
        until=until,
        rolled_up_to=await repo.watermark(conn),
        days=list(by_day.values()),
        totals=totals,
    )


def _net(kind: str, points: int, money: int) -> tuple[int, int]:
    """What a flow does to the outstanding points and liability."""
    return (points, money) if kind in ("issued", "adjusted") else (-points, -money)


async def liability_series(
    conn: Executor, programme_id: int, since: date | None = None, until: date | None = None
) -> s.LiabilitySeries:
    """Outstanding points and their money value at the end of each day, and the breakage
    rate to date. The last day equals GET /v1/reports/liability (see docs/reports.md)."""
    programme = await _programme(conn, programme_id)
    since, until = await _period(conn, programme, since, until)
    points = money = expired = redeemed = 0
    for kind, (p, m) in (await repo.flow_totals_before(conn, programme_id, since)).items():
        dp, dm = _net(kind, p, m)
        points, money = points + dp, money + dm
        expired += p if kind == "expired" else 0
        redeemed += p if kind == "redeemed" else 0
    rows: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for row in await repo.flows(conn, programme_id, since, until):
        rows[row["day"]].append(row)
    out = []
    for day in core.days(since, until):
        for row in rows.get(day, ()):
            dp, dm = _net(row["kind"], int(row["points"]), int(row["money_micros"]))
            points, money = points + dp, money + dm
            expired += int(row["points"]) if row["kind"] == "expired" else 0
            redeemed += int(row["points"]) if row["kind"] == "redeemed" else 0
        out.append(
            s.LiabilityDay(
                day=day,
                outstanding_points=points,
                liability_micros=money,
                breakage_rate=core.breakage_rate(expired, redeemed),
            )
        )
    return s.LiabilitySeries(
        currency=programme["currency"],
        since=since,
        until=until,
        rolled_up_to=await repo.watermark(conn),
        days=out,
    )


async def forecast(conn: Executor, programme_id: int) -> s.Forecast:
    """The next 12 months: points due to expire each local month (from the lots, as of the
    last refresh) and the breakage the last 12 months predict: due × expired / (expired +
    redeemed), in points and in money."""
    programme = await _programme(conn, programme_id)
    today = await repo.today(conn, programme["timezone"])
    basis_since = today - timedelta(days=364)
    expired = redeemed = 0
    for row in await repo.flows(conn, programme_id, basis_since, today):
        expired += int(row["points"]) if row["kind"] == "expired" else 0
        redeemed += int(row["points"]) if row["kind"] == "redeemed" else 0
    whole = expired + redeemed
    due = {row["month"]: row for row in await repo.expiry_forecast(conn, programme_id)}
    months = []
    first = core.month_start(today)
    for i in range(core.FORECAST_MONTHS):
        month = core.add_months(first, i)
        found = due.get(month)
        points = int(found["points"]) if found else 0
        micros = int(found["money_micros"]) if found else 0
        months.append(
            s.ForecastMonth(
                month=month,
                due_points=points,
                due_micros=micros,
                predicted_breakage_points=core.ratio_share(points, expired, whole),
                predicted_breakage_micros=core.ratio_share(micros, expired, whole),
            )
        )
    computed = [row["computed_at"] for row in due.values()]
    return s.Forecast(
        currency=programme["currency"],
        basis_since=basis_since,
        basis_until=today,
        expired_points=expired,
        redeemed_points=redeemed,
        breakage_ratio=core.breakage_rate(expired, redeemed),
        computed_at=max(computed) if computed else await repo.forecast_computed_at(conn),
        months=months,
        due_points=sum(m.due_points for m in months),
        due_micros=sum(m.due_micros for m in months),
        predicted_breakage_points=sum(m.predicted_breakage_points for m in months),
        predicted_breakage_micros=sum(m.predicted_breakage_micros for m in months),
    )


async def stock(conn: Executor, programme_id: int) -> s.Stock:
    """The members' available, pending and held points, as of the watermark."""
    await _programme(conn, programme_id)
    available, pending, held = await repo.stock_before(conn, programme_id, None)
    return s.Stock(
        rolled_up_to=await repo.watermark(conn),
        available=available,
        pending=pending,
        held=held,
        outstanding=available + pending + held,
    )


async def stock_series(
    conn: Executor, programme_id: int, since: date | None = None, until: date | None = None
) -> s.StockSeries:
    """Available, pending and held stock at the end of each day."""
    programme = await _programme(conn, programme_id)
    since, until = await _period(conn, programme, since, until)
    available, pending, held = await repo.stock_before(conn, programme_id, since)
    changes = {row["day"]: row for row in await repo.stock_changes(conn, programme_id, since, until)}
    out = []
    for day in core.days(since, until):
        if (row := changes.get(day)) is not None:
            available += int(row["available"])
            pending += int(row["pending"])
            held += int(row["held"])
        out.append(s.StockDay(day=day, available=available, pending=pending, held=held))
    return s.StockSeries(since=since, until=until, rolled_up_to=await repo.watermark(conn), days=out)


async def members_by_tier(conn: Executor, programme_id: int) -> s.MembersByTier:
    """Members per tier now, lowest tier first. The tier engine keeps no row (and writes no
    history) for a member in the base tier, so the moves count every tier above it, and the
    base tier holds every other member. Without a ladder, everyone is untiered."""
    await _programme(conn, programme_id)
    counts = await repo.tier_counts(conn, programme_id)
    total = await repo.members_before(conn, programme_id, None)
    ladder = await repo.ladder_tiers(conn, programme_id)
    if not ladder:
        placed = {tier: n for tier, n in counts.items() if n > 0}
        tiers = [s.TierCount(tier=tier, members=n) for tier, n in sorted(placed.items())]
        return s.MembersByTier(tiers=tiers, untiered=total - sum(placed.values()), total_members=total)
    base = ladder[0][0]
    above = {tier: n for tier, n in counts.items() if tier != base}
    tiers = [s.TierCount(tier=base, members=total - sum(above.values()))]
    tiers += [s.TierCount(tier=code, members=above.pop(code, 0)) for code, _ in ladder[1:]]
    # Tiers that left the ladder but still have members.
    tiers += [s.TierCount(tier=tier, members=n) for tier, n in sorted(above.items()) if n]
    return s.MembersByTier(tiers=tiers, untiered=0, total_members=total)


async def tier_moves_per_week(
    conn: Executor, programme_id: int, since: date | None = None, until: date | None = None
) -> s.TierMoves:
    """Tier changes per week (weeks start on Monday, local time), by kind and by pair of tiers."""
    programme = await _programme(conn, programme_id)
    since, until = await _period(conn, programme, since, until)
    by_week: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for row in await repo.tier_moves(conn, programme_id, since, until):
        by_week[row["week"]].append(row)
    weeks = []
    week = since - timedelta(days=since.weekday())
    while week <= until:
        rows = by_week.get(week, [])
        moves = [
            s.TierMove(
                kind=r["kind"],
                from_tier=r["from_tier"] or None,
                to_tier=r["to_tier"] or None,
                moves=int(r["moves"]),
            )
            for r in rows
        ]
        promoted = sum(m.moves for m in moves if m.kind == "promoted")
        demoted = sum(m.moves for m in moves if m.kind == "demoted")
        other = sum(m.moves for m in moves) - promoted - demoted
        weeks.append(s.TierWeek(week=week, promoted=promoted, demoted=demoted, other=other, moves=moves))
        week += timedelta(days=7)
    return s.TierMoves(since=since, until=until, weeks=weeks)


async def new_and_active_members(
    conn: Executor, programme_id: int, since: date | None = None, until: date | None = None
) -> s.MemberActivity:
    """New members, members active (an event or a transaction that day) and members enrolled
    by the end of each day."""
    programme = await _programme(conn, programme_id)
    since, until = await _period(conn, programme, since, until)
    total = await repo.members_before(conn, programme_id, since)
    rows = {row["day"]: row for row in await repo.member_days(conn, programme_id, since, until)}
    out = []
    for day in core.days(since, until):
        row = rows.get(day)
        new = int(row["new_members"]) if row else 0
        total += new
        out.append(
            s.MemberDay(
                day=day,
                new_members=new,
                active_members=int(row["active_members"]) if row else 0,
                total_members=total,
            )
        )
    return s.MemberActivity(since=since, until=until, rolled_up_to=await repo.watermark(conn), days=out)


async def budget_burn(
    conn: Executor, programme_id: int, since: date | None = None, until: date | None = None
) -> s.BudgetBurns:
    """Each budget's issued points against its cap at the end of each day, and now."""
    programme = await _programme(conn, programme_id)
    since, until = await _period(conn, programme, since, until)
    opening = await repo.budget_totals_before(conn, programme_id, since)
    overall = await repo.budget_totals_before(conn, programme_id, None)
    changes: dict[int, dict[date, dict[str, Any]]] = defaultdict(dict)
    for row in await repo.budget_days(conn, programme_id, since, until):
        changes[int(row["budget_id"])][row["day"]] = row
    burns = []
    for budget in await repo.budgets(conn, programme_id):
        issued, cap = opening.get(budget["id"], (0, 0))
        series = []
        for day in core.days(since, until):
            if (change := changes[budget["id"]].get(day)) is not None:
                issued += int(change["issued"])
                cap += int(change["cap_change"])
            series.append(s.BurnDay(day=day, issued=issued, cap=cap))
        issued_now, cap_now = overall.get(budget["id"], (0, 0))
        burns.append(
            s.BudgetBurn(
                code=budget["code"],
                name=budget["name"],
                status=budget["status"],
                unit_cost_micros=int(budget["unit_cost_micros"]),
                cap=cap_now,
                issued=issued_now,
                remaining=cap_now - issued_now,
                issued_micros=issued_now * int(budget["unit_cost_micros"]),
                days=series,
            )
        )
    return s.BudgetBurns(
        currency=programme["currency"],
        since=since,
        until=until,
        rolled_up_to=await repo.watermark(conn),
        budgets=burns,
    )


# Export ---------------------------------------------------------------------------------


async def export_period(
    conn: Executor, programme_id: int, since: date | None, until: date | None
) -> tuple[date, date]:
    """Checks the period of an export before the stream starts (a bad one is a 4xx, not a
    broken download)."""
    programme = await _programme(conn, programme_id)
    return await _period(conn, programme, since, until)


async def export_transactions(
    engine: AsyncEngine, programme_id: int, since: date, until: date, batch: int = 2_000
) -> AsyncIterator[bytes]:
    """The transactions created on the local days since..until, one CSV record each, oldest
    first, as UTF-8 chunks of ``batch`` records: memory stays flat whatever the period holds.
    The stream reads one snapshot (REPEATABLE READ) on its own connection."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            programme = await _programme(conn, programme_id)
            currency, tz = programme["currency"], ZoneInfo(programme["timezone"])
            start, end = core.local_bounds(since, until, programme["timezone"])
            buffer = io.StringIO()
            writer = csv.writer(buffer, lineterminator="\r\n")
            writer.writerow(core.CSV_COLUMNS)
            n = 0
            async for row in repo.export_rows(conn, programme_id, start, end, batch):
                writer.writerow(core.csv_fields(row, currency, tz))
                n += 1
                if n % batch == 0:
                    yield buffer.getvalue().encode()
                    buffer.seek(0)
                    buffer.truncate()
            yield buffer.getvalue().encode()

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
from itertools import accumulate
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


def _period(programme: dict[str, Any], since: date | None, until: date | None) -> tuple[date, date]:
    return core.period(since, until, programme["today"])


async def daily_flows(
    conn: Executor, programme_id: int, since: date | None = None, until: date | None = None
) -> s.DailyFlows:
    """Points and money issued, redeemed, expired, clawed back and adjusted, per local day
    (every day of the period, zeros included)."""
    programme = await _programme(conn, programme_id)
    since, until = _period(programme, since, until)
    days = [s.FlowDay(**row) for row in await repo.flow_days(conn, programme_id, since, until)]
    totals = s.FlowFigures(
        **{field: sum(getattr(d, field) for d in days) for field in s.FlowFigures.__struct_fields__}
    )
    return s.DailyFlows(
        currency=programme["currency"],
        since=since,
        until=until,
        rolled_up_to=programme["rolled_up_to"],
        days=days,
        totals=totals,
    )


async def liability_series(
    conn: Executor, programme_id: int, since: date | None = None, until: date | None = None
) -> s.LiabilitySeries:
    """Outstanding points and their money value at the end of each day, and the breakage
    rate to date. The last day equals GET /v1/reports/liability (see docs/reports.md)."""
    programme = await _programme(conn, programme_id)
    since, until = _period(programme, since, until)
    days = [
        s.LiabilityDay(
            day=row["day"],
            outstanding_points=row["outstanding_points"],
            liability_micros=row["liability_micros"],
            breakage_rate=core.breakage_rate(row["expired"], row["redeemed"]),
        )
        for row in await repo.liability_days(conn, programme_id, since, until)
    ]
    return s.LiabilitySeries(
        currency=programme["currency"],
        since=since,
        until=until,
        rolled_up_to=programme["rolled_up_to"],
        days=days,
    )


async def forecast(conn: Executor, programme_id: int) -> s.Forecast:
    """The next 12 months: points due to expire each local month (from the lots, as of the
    last refresh) and the breakage the last 12 months predict: due × expired / (expired +
    redeemed), in points and in money."""
    programme = await _programme(conn, programme_id)
    today = programme["today"]
    basis_since = today - timedelta(days=364)
    sums = await repo.flow_sums(conn, programme_id, basis_since, today)
    expired, redeemed = sums["expired_points"], sums["redeemed_points"]
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
    programme = await _programme(conn, programme_id)
    available, pending, held = await repo.stock_now(conn, programme_id)
    return s.Stock(
        rolled_up_to=programme["rolled_up_to"],
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
    since, until = _period(programme, since, until)
    days = [s.StockDay(**row) for row in await repo.stock_days(conn, programme_id, since, until)]
    return s.StockSeries(since=since, until=until, rolled_up_to=programme["rolled_up_to"], days=days)


async def members_by_tier(conn: Executor, programme_id: int) -> s.MembersByTier:
    """Members per tier now, lowest tier first. The tier engine keeps no row (and writes no
    history) for a member in the base tier, so the moves count every tier above it, and the
    base tier holds every other member. Without a ladder, everyone is untiered."""
    await _programme(conn, programme_id)
    counts = await repo.tier_counts(conn, programme_id)
    total = await repo.members_total(conn, programme_id)
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
    since, until = _period(programme, since, until)
    by_week: dict[date, list[dict[str, Any]]] = defaultdict(list)
    for row in await repo.tier_moves(conn, programme_id, since, until):
        by_week[row["week"]].append(row)
    weeks = []
    week = since - timedelta(days=since.weekday())
    while week <= until:
        moves = [
            s.TierMove(
                kind=r["kind"],
                from_tier=r["from_tier"] or None,
                to_tier=r["to_tier"] or None,
                moves=int(r["moves"]),
            )
            for r in by_week.get(week, [])
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
    since, until = _period(programme, since, until)
    days = [s.MemberDay(**row) for row in await repo.member_days(conn, programme_id, since, until)]
    return s.MemberActivity(since=since, until=until, rolled_up_to=programme["rolled_up_to"], days=days)


async def budget_burn(
    conn: Executor, programme_id: int, since: date | None = None, until: date | None = None
) -> s.BudgetBurns:
    """Each budget's issued points against its cap at the end of each day, and now."""
    programme = await _programme(conn, programme_id)
    since, until = _period(programme, since, until)
    burns = [
        s.BudgetBurn(
            code=row["code"],
            name=row["name"],
            status=row["status"],
            unit_cost_micros=int(row["unit_cost_micros"]),
            cap=row["cap"],
            issued=row["issued"],
            remaining=row["cap"] - row["issued"],
            issued_micros=row["issued"] * int(row["unit_cost_micros"]),
            issued_series=list(accumulate(row["issued_changes"], initial=row["opening_issued"]))[1:],
            cap_series=list(accumulate(row["cap_changes"], initial=row["opening_cap"]))[1:],
        )
        for row in await repo.budget_series(conn, programme_id, since, until)
    ]
    return s.BudgetBurns(
        currency=programme["currency"],
        since=since,
        until=until,
        rolled_up_to=programme["rolled_up_to"],
        days=list(core.days(since, until)),
        budgets=burns,
    )


async def export_period(
    conn: Executor, programme_id: int, since: date | None, until: date | None
) -> tuple[date, date]:
    """Checks the period of an export before the stream starts (a bad one is a 4xx, not a
    broken download)."""
    return _period(await _programme(conn, programme_id), since, until)


# Export ---------------------------------------------------------------------------------


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

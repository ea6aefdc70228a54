"""One-time gifts: a gift benefit pays its points through the ledger, once per period, to the
members entitled to it on their birthday."""

from __future__ import annotations

import calendar
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.benefits import core, events, repository
from loyalty.benefits.audience import who_gets
from loyalty.benefits.catalogue import to_def, utcnow
from loyalty.benefits.entitlements import member_id_of, source_ref, sources_of, with_upgrades
from loyalty.errors import DomainError
from loyalty.http.principal import Principal


async def grant_gifts(conn: AsyncConnection, who: Principal, now: datetime) -> int:
    """The day's one-time gifts of one programme: each active gift benefit pays its points from
    its budget through the ledger to the members entitled to it whose CRM attribute
    ``birthday`` ("MM-DD" or "YYYY-MM-DD") is today in the programme's time zone. Idempotent:
    the ledger key is per member, benefit and period, so a second run (or a second birthday in
    the same period) pays nothing. A budget's refusal skips that member and is logged by the
    caller's counts; it never fails the run."""
    from loyalty.ledger import schemas as ls
    from loyalty.ledger import service as ledger

    today = now.astimezone(ZoneInfo(who.timezone)).date()
    mmdd = f"{today.month:02d}-{today.day:02d}"
    if (today.month, today.day) == (2, 28) and not calendar.isleap(today.year):
        days = [mmdd, "02-29"]
    else:
        days = [mmdd]
    paid = 0
    for row in await repository.all_benefits(conn, who.programme_id):
        benefit = to_def(row)
        if benefit.type != "gift" or core.availability(benefit, now, None) is not None:
            continue
        period = str(benefit.params.get("period", "year"))
        start = core.period_bounds(period, now, who.timezone)[0]
        whom = await who_gets(conn, who, benefit.code, now)
        for day in days:
            after: str | None = None
            while True:
                page = await repository.entitled_members(
                    conn,
                    who.programme_id,
                    whom.benefit_id,
                    whom.tiers,
                    whom.segment_rules,
                    now,
                    after,
                    1000,
                    birthday=day,
                    upgrades=whom.upgrades,
                    ranks=whom.ranks,
                )
                for external_id in page:
                    paid += await _pay_gift(conn, who, benefit, external_id, start, ledger, ls)
                if len(page) < 1000:
                    break
                after = page[-1]
    return paid


async def _pay_gift(
    conn: AsyncConnection,
    who: Principal,
    benefit: core.BenefitDef,
    external_id: str,
    start: date,
    ledger: Any,
    ls: Any,
) -> int:
    member_id = await member_id_of(conn, who, external_id)
    defs = await with_upgrades(conn, who.programme_id, benefit)
    _, sources = await sources_of(conn, who.programme_id, member_id, utcnow(), defs, only=benefit)
    source = core.best_source(benefit.type, sources.get(benefit.id, []), benefit.params)
    if source is None:
        return 0
    params = core.merged(benefit.params, source.params)
    key = f"benefit-gift:{benefit.code}:{external_id}:{start.isoformat()}"
    request = ls.EarnRequest(
        member_id=external_id,
        budget=params["budget"],
        points=int(params["points"]),
        reference=key,
        reason=f"gift {benefit.code}",
    )
    try:
        async with conn.begin_nested():
            posted = await ledger.earn(conn, who, request, key)
            if not posted.replayed:
                await events.emit(
                    conn,
                    who.programme_id,
                    "benefit.granted",
                    f"member:{external_id}",
                    {
                        "member_id": external_id,
                        "benefit": benefit.code,
                        "source": source_ref(source),
                        "params": params,
                        "period_start": start.isoformat(),
                        "points": int(params["points"]),
                    },
                )
    except DomainError:
        return 0
    return 0 if posted.replayed else 1

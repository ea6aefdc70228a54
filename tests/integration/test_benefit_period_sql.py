"""The quota period benefit_consume counts a use in (benefit_period_start, in SQL) is the one
the checkout check and the entitlements report (core.period_bounds, in Python): the local date
the period started in the programme's time zone, for every period and any instant."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.benefits import core

# Zones whose rules have not moved since 2010, so PostgreSQL's and Python's tz data agree;
# with half-hour and 45-minute offsets, both hemispheres' summer time, and none.
ZONES = [
    "UTC",
    "Asia/Shanghai",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",
    "Asia/Kolkata",
    "America/St_Johns",
    "Pacific/Chatham",
]
instants = st.datetimes(
    min_value=datetime(2010, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(period=st.sampled_from(core.PERIODS), now=instants, tz=st.sampled_from(ZONES))
async def test_the_sql_period_start_is_the_python_one(
    engine: AsyncEngine, period: str, now: datetime, tz: str
) -> None:
    async with engine.connect() as conn:
        start = await conn.scalar(
            text("SELECT benefit_period_start(:period, :now, :tz)"), {"period": period, "now": now, "tz": tz}
        )
    assert start == core.period_bounds(period, now, tz)[0]

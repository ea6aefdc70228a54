"""A programme's activity settings (facts window, RFM and lifecycle cut points, custom event
types) and the refresh of its members' facts."""

from __future__ import annotations

import msgspec
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty import audit
from loyalty.activity import core, repository
from loyalty.activity import schemas as s
from loyalty.activity.event_config import now_utc
from loyalty.http.principal import Principal
from loyalty.programmes import repository as programmes


async def get_settings(conn: AsyncConnection, who: Principal) -> s.ActivitySettingsView:
    return s.ActivitySettingsView(**await repository.settings(conn, who.programme_id))


async def put_settings(
    conn: AsyncConnection, who: Principal, req: s.ActivitySettingsIn
) -> s.ActivitySettingsView:
    core.check_settings(
        window_kind=req.window_kind,
        window_months=req.window_months,
        rfm=req.rfm,
        lifecycle=req.lifecycle,
        custom=req.custom_event_types,
    )
    values = msgspec.to_builtins(req)
    before = await repository.settings(conn, who.programme_id)
    await repository.put_settings(conn, who.programme_id, values)
    # The config tables carry no config_version trigger on Citus (docs/scaling.md).
    await programmes.bump_config_version(conn, who.programme_id)
    await audit.record(
        conn,
        who,
        action="activity_settings.update",
        entity="activity_settings",
        entity_id=who.programme_code,
        before=before,
        after=values,
    )
    # Scores and stages follow the new cut points at once, not at the next nightly refresh.
    await repository.refresh_facts(conn, who.programme_id, now=now_utc())
    return s.ActivitySettingsView(**values)


async def refresh_programme(conn: AsyncConnection, programme_id: int) -> int:
    """Window figures, RFM and lifecycle of every member of the programme: one statement."""
    return await repository.refresh_facts(conn, programme_id, now=now_utc())

"""Activity jobs for the arq worker."""

from __future__ import annotations

import logging
from typing import Any

from loyalty.activity import activity_settings, repository

log = logging.getLogger("loyalty.activity.tasks")


async def refresh_member_facts(ctx: dict[str, Any]) -> int:
    """Daily: window figures, RFM and lifecycle of every member roll on even without events.

    One statement per programme, one transaction each; safe to run twice (it recomputes)."""
    engine = ctx["engine"]
    async with engine.connect() as conn:
        programmes = await repository.programmes_with_members(conn)
    total = 0
    for programme_id in programmes:
        async with engine.begin() as conn:
            total += await activity_settings.refresh_programme(conn, programme_id)
    if total:
        log.info("refreshed the facts of %d members in %d programmes", total, len(programmes))
    return total

"""Console jobs for the arq worker: ended sessions are removed (hourly)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from loyalty.console import repository


async def purge_console_sessions(ctx: dict[str, Any]) -> int:
    """Deletes sessions past their lifetime or idle longer than the setting allows."""
    now = datetime.now(UTC)
    idle = timedelta(minutes=ctx["settings"].console_idle_minutes)
    async with ctx["engine"].begin() as conn:
        return await repository.delete_expired_sessions(conn, now, now - idle)

"""Where a member's rows live when the database is a Citus cluster (docs/scaling.md).

On Citus every member-scoped table is distributed by the member, and a member's id is a hash of
its programme and external id (``loyalty_member_key`` in ledger_v1.sql; migration 0021). A
caller that passes that key to a posting function lets Citus run the whole call on the member's
node (the functions are delegated by it); without it the call still works, from the
coordinator. On a single PostgreSQL none of this applies and nothing here is used.
"""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg

_SIGN_BIT_CLEARED = (1 << 63) - 1
CITUS_PRESENT = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"

# The posting functions delegated by their member (the end of ledger_v1.sql).
# (ledger_capture and ledger_void are delegated by their hold's id, which needs no key.)
ROUTED = frozenset({"ledger_earn", "ledger_spend", "ledger_hold", "ledger_clawback"})
# What a delegated call raises when it needs shards on other nodes; it wrote nothing.
NEEDS_COORDINATOR = "LY002"


class Layout:
    """The process's view of the database: set once at start-up by ``detect``."""

    citus: bool = False


def member_key(programme_id: int, external_id: str) -> int:
    """The same number as SQL's loyalty_member_key: the low 63 bits of an MD5 of 'programme/id'."""
    digest = hashlib.md5(f"{programme_id}/{external_id}".encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big") & _SIGN_BIT_CLEARED


async def detect(conn: Any, timeout: float = 2.0) -> bool:
    """Reads whether the database is a Citus coordinator (an asyncpg connection or pool).

    A database that cannot answer now (the API starting while PostgreSQL is down) counts as a
    single node: the API must start anyway and answer 503 until it is back. On Citus that only
    costs speed, never correctness: postings then run from the coordinator.
    """
    try:
        Layout.citus = bool(await conn.fetchval(CITUS_PRESENT, timeout=timeout))
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        Layout.citus = False
    return Layout.citus


def route(function: str, params: dict[str, Any]) -> dict[str, Any]:
    """The call's parameters with its member's key added, when the call is delegated on Citus."""
    if not Layout.citus or function not in ROUTED or "p_member_key" in params:
        return params
    return {**params, "p_member_key": member_key(params["p_programme"], params["p_member"])}

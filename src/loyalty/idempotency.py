"""What an idempotent write answers, and the connections a posting function runs on.

Shared by the ledger (which makes the calls), the HTTP lanes (which send the answer as it came)
and every route that answers a posting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

import asyncpg
from sqlalchemy.ext.asyncio import AsyncConnection

# A posting function runs on a SQLAlchemy connection (inside a request's transaction) or on a
# raw asyncpg connection of the posting pool (its own statement, autocommitted).
PostingConnection: TypeAlias = AsyncConnection | asyncpg.Connection | asyncpg.pool.PoolConnectionProxy


@dataclass(frozen=True, slots=True)
class Posted:
    """What a posting function answered: its JSON body, and whether it was a replay."""

    replayed: bool
    body: bytes

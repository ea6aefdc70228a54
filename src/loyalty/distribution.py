"""Where a member's rows live when the database is a Citus cluster (docs/scaling.md).

On Citus every member-scoped table is distributed by the member, and a member's id is a hash of
its programme and external id (``loyalty_member_key`` in ledger_v1.sql; migration 0021). A
caller that passes that key to a posting function lets Citus run the whole call on the member's
node (the functions are delegated by it); without it the call still works, from the
coordinator. On a single PostgreSQL none of this applies and nothing here is used.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Any

import asyncpg

_SIGN_BIT_CLEARED = (1 << 63) - 1
CITUS_PRESENT = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"

# The posting functions delegated by their member (the end of ledger_v1.sql).
# (ledger_capture and ledger_void are delegated by their hold's id, which needs no key.)
ROUTED = frozenset({"ledger_earn", "ledger_spend", "ledger_hold", "ledger_clawback"})
# Delegated by their hold, whose id hashes into the member's shard.
HOLD_ROUTED = frozenset({"ledger_capture", "ledger_void"})
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


_CITUS_BY_DATABASE: dict[str, bool] = {}


async def on_citus(conn: Any) -> bool:
    """Whether a SQLAlchemy connection's database is a Citus coordinator, for the code that runs
    outside the API (the worker's jobs): ``Layout`` when the process detected it, else read once
    per database."""
    if Layout.citus:
        return True
    key = conn.engine.url.render_as_string(hide_password=True)
    if key not in _CITUS_BY_DATABASE:
        _CITUS_BY_DATABASE[key] = bool((await conn.exec_driver_sql(CITUS_PRESENT)).scalar())
    return _CITUS_BY_DATABASE[key]


def route(function: str, params: dict[str, Any], *, citus: bool | None = None) -> dict[str, Any]:
    """The call's parameters with its member's key added, when the call is delegated on Citus
    (``citus``, else as ``detect`` found)."""
    if not (Layout.citus if citus is None else citus) or function not in ROUTED or "p_member_key" in params:
        return params
    return {**params, "p_member_key": member_key(params["p_programme"], params["p_member"])}


# What ledger_post_batch_routed raises when an operation's member is not on the routed shard:
# the API's shard map is out of date (a rebalance moved or split shards). It wrote nothing.
STALE_SHARD_MAP = "LY003"

_MASK32 = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK32


def hashint8(value: int) -> int:
    """PostgreSQL's hashint8 (what Citus hashes a bigint distribution column with), as the
    signed 32-bit number SQL's ``hashint8(value)`` answers: the bigint folded to 32 bits
    (hashint8 in src/backend/access/hash/hashfunc.c), then Bob Jenkins' hash_uint32."""
    lo = value & _MASK32
    hi = (value >> 32) & _MASK32
    k = lo ^ (hi if value >= 0 else ~hi & _MASK32)
    a = b = c = (0x9E3779B9 + 4 + 3923095) & _MASK32
    a = (a + k) & _MASK32
    # final(a, b, c) of PostgreSQL's common/hashfn.c
    c ^= b
    c = (c - _rot(b, 14)) & _MASK32
    a ^= c
    a = (a - _rot(c, 11)) & _MASK32
    b ^= a
    b = (b - _rot(a, 25)) & _MASK32
    c ^= b
    c = (c - _rot(b, 16)) & _MASK32
    a ^= c
    a = (a - _rot(c, 4)) & _MASK32
    b ^= a
    b = (b - _rot(a, 14)) & _MASK32
    c ^= b
    c = (c - _rot(b, 24)) & _MASK32
    return c - (1 << 32) if c & 0x80000000 else c


# Two reads, not a join: the catalog is the coordinator's, ledger_anchors a reference table.
_SHARDS_SQL = (
    "SELECT shardid, shardminvalue::int, shardmaxvalue::int FROM pg_dist_shard"
    " WHERE logicalrelid = 'members'::regclass"
)
_ANCHORS_SQL = "SELECT shardid, anchor FROM ledger_anchors"


class ShardMap:
    """The hash ranges of the shards of ``members`` (and of every table co-located with it)
    and each shard's anchor, as read from the coordinator: which shard a member key, or a hold
    id, falls in. It may go stale when the cluster is rebalanced; ledger_post_batch_routed then
    refuses (LY003) and the reader loads it again."""

    def __init__(self, shards: list[tuple[int, int, int, int | None]]) -> None:
        # (shard id, lowest hash, highest hash, anchor or None), by lowest hash.
        self._shards = sorted(shards, key=lambda s: s[1])
        self._mins = [s[1] for s in self._shards]

    @classmethod
    async def load(cls, conn: Any) -> ShardMap:
        anchors = {r[0]: r[1] for r in await conn.fetch(_ANCHORS_SQL)}
        return cls([(r[0], r[1], r[2], anchors.get(r[0])) for r in await conn.fetch(_SHARDS_SQL)])

    def __len__(self) -> int:
        return len(self._shards)

    def shard_of(self, key: int) -> int:
        """The shard id that holds distribution key ``key``."""
        hashed = hashint8(key)
        i = bisect.bisect_right(self._mins, hashed) - 1
        if i < 0 or hashed > self._shards[i][2]:
            raise LookupError(f"no shard covers hash {hashed}")
        return self._shards[i][0]

    def anchor(self, shard: int) -> int | None:
        """The anchor of shard ``shard`` (a key that hashes into it), when it has one."""
        for shardid, _, _, anchor in self._shards:
            if shardid == shard:
                return anchor
        return None


def op_key(function: str, params: dict[str, Any]) -> int | None:
    """The distribution key a posting runs under: its member's key, or its hold's id for a
    capture or void (a hold's id hashes into its member's shard); None for anything else."""
    if function in ROUTED:
        key = params.get("p_member_key")
        return int(key) if key is not None else member_key(params["p_programme"], params["p_member"])
    if function in HOLD_ROUTED:
        return int(params["p_hold"])
    return None

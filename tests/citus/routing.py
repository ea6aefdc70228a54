"""Routing proofs on the Citus cluster: `single_shard_only` fails when code fans out.

Three witnesses, all read from the cluster itself:

- **Two-phase commits.** Citus commits a transaction that wrote on more than one node with
  2PC and records it in ``pg_dist_transaction`` of the node that coordinated it: the
  coordinator, or the worker a delegated function ran on. The test cluster keeps those records
  (``citus.recover_2pc_interval = -1``), so a new row on any node is a distributed transaction.
- **Multi-shard executions.** ``citus_stat_counters`` (``citus.enable_stat_counters``) counts
  the single- and multi-shard executions per database on each node, including those a
  delegated function runs on its worker. A rise of ``query_execution_multi_shard`` on any node
  is a query that fanned out.
- **Shards per transaction**, for a connection handed in: that connection logs the commands
  the coordinator sends (``citus.log_remote_commands``) and refuses multi-task queries at once
  (``citus.multi_task_query_log_level = 'error'``). A transaction whose commands name shards of
  two shard groups fails even when both lie on one worker (which commits with one phase, so
  the first witness cannot see it).

What none of them sees: a delegated function that reaches a second shard on its own worker
with single-shard statements. ``create_distributed_function(..., force_delegation => true)``
makes Citus itself refuse that.

The counters are per database and per node, shared by every session of the database: the block
should contain only the code under test (each xdist worker has its own database).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.db import async_url, plain_url


class FannedOut(AssertionError):
    """The code under `single_shard_only` ran a multi-shard query or a distributed transaction."""


@dataclass(frozen=True)
class NodeCounts:
    two_phase_commits: int
    single_shard: int
    multi_shard: int


@dataclass
class RoutingReport:
    """What the block did, node by node (filled in when it ends)."""

    before: dict[str, NodeCounts] = field(default_factory=dict)
    after: dict[str, NodeCounts] = field(default_factory=dict)
    # For a connection handed in: the shard groups each distributed transaction id touched.
    shard_groups_by_transaction: dict[str, set[int]] = field(default_factory=dict)

    def delta(self, node: str) -> NodeCounts:
        before, after = self.before[node], self.after[node]
        return NodeCounts(
            two_phase_commits=after.two_phase_commits - before.two_phase_commits,
            single_shard=after.single_shard - before.single_shard,
            multi_shard=after.multi_shard - before.multi_shard,
        )

    @property
    def shard_groups_touched(self) -> int:
        """Distinct shard groups the handed-in connection's remote commands named."""
        return len(set().union(*self.shard_groups_by_transaction.values()))

    @property
    def single_shard_executions(self) -> int:
        return sum(self.delta(node).single_shard for node in self.after)

    def problems(self) -> list[str]:
        found = []
        for node in self.after:
            delta = self.delta(node)
            if delta.two_phase_commits:
                found.append(f"{node}: {delta.two_phase_commits} two-phase commit record(s)")
            if delta.multi_shard:
                found.append(f"{node}: {delta.multi_shard} multi-shard execution(s)")
        for transaction, groups in self.shard_groups_by_transaction.items():
            if len(groups) > 1:
                found.append(f"transaction {transaction} touched {len(groups)} shard groups")
        return found


@asynccontextmanager
async def single_shard_only(
    database_url: str, *, connection: asyncpg.Connection | AsyncConnection | None = None
) -> AsyncIterator[RoutingReport]:
    """Fail (`FannedOut`) if the block fans out anywhere on the cluster of ``database_url``.

    ``database_url`` is the coordinator's URL of the database under test; the workers are found
    in its ``pg_dist_node``. With ``connection`` (asyncpg, or SQLAlchemy's AsyncConnection),
    that connection's multi-task queries fail at once and its transactions are checked for a
    second shard group.
    """
    nodes = await _nodes(database_url)
    report = RoutingReport(before=await _counts(nodes))
    raw = await _raw(connection) if connection is not None else None
    watcher = _RemoteCommandWatcher() if raw is not None else None
    if raw is not None and watcher is not None:
        await raw.execute(
            "SET citus.multi_task_query_log_level = 'error'; SET citus.log_remote_commands = on; "
            "SET client_min_messages = notice"
        )
        raw.add_log_listener(watcher.on_message)
    try:
        yield report
    finally:
        if raw is not None and watcher is not None:
            raw.remove_log_listener(watcher.on_message)
            if not raw.is_closed() and not raw.is_in_transaction():
                await raw.execute("RESET citus.multi_task_query_log_level; RESET citus.log_remote_commands")
    report.after = await _counts(nodes)
    if watcher is not None:
        report.shard_groups_by_transaction = await watcher.shard_groups(database_url)
    problems = report.problems()
    if problems:
        raise FannedOut("the block was not single-shard: " + "; ".join(problems))


# --- the nodes and their counters -----------------------------------------------------------


async def _nodes(database_url: str) -> dict[str, str]:
    """Node label -> URL of the same database on that node (coordinator first)."""
    connection = await asyncpg.connect(plain_url(database_url))
    try:
        rows = await connection.fetch(
            "SELECT groupid, nodename, nodeport FROM pg_dist_node "
            "WHERE isactive AND noderole = 'primary' ORDER BY groupid"
        )
    finally:
        await connection.close()
    if not rows:
        raise RuntimeError(f"{database_url} has no Citus nodes: is this a `make test-citus` run?")
    url = make_url(async_url(database_url))
    nodes = {}
    for row in rows:
        label = "coordinator" if row["groupid"] == 0 else f"{row['nodename']}:{row['nodeport']}"
        node_url = url.set(host=row["nodename"], port=row["nodeport"], query={})
        nodes[label] = plain_url(node_url.render_as_string(hide_password=False))
    return nodes


_COUNTS = """
SELECT (SELECT count(*) FROM pg_dist_transaction) AS two_phase_commits,
       c.query_execution_single_shard AS single_shard,
       c.query_execution_multi_shard AS multi_shard
  FROM citus_stat_counters((SELECT oid FROM pg_database WHERE datname = current_database())) AS c
"""


async def _counts(nodes: dict[str, str]) -> dict[str, NodeCounts]:
    counts = {}
    for label, url in nodes.items():
        connection = await asyncpg.connect(url)
        try:
            enabled = await connection.fetchval("SELECT current_setting('citus.enable_stat_counters')::bool")
            if not enabled:
                raise RuntimeError(f"{label}: citus.enable_stat_counters is off (see loyalty.embedded_citus)")
            row = await connection.fetchrow(_COUNTS)
        finally:
            await connection.close()
        assert row is not None
        counts[label] = NodeCounts(row["two_phase_commits"], row["single_shard"], row["multi_shard"] or 0)
    return counts


async def _raw(connection: asyncpg.Connection | AsyncConnection) -> asyncpg.Connection:
    if isinstance(connection, asyncpg.Connection):
        return connection
    fairy = await connection.get_raw_connection()
    driver = fairy.driver_connection
    assert isinstance(driver, asyncpg.Connection), f"not an asyncpg connection: {driver!r}"
    return driver


# --- the commands a connection sends to the workers ------------------------------------------

_TRANSACTION_ID = re.compile(r"assign_distributed_transaction_id\((\d+), (\d+),")
_SHARD_NAME = re.compile(r"\b[a-z_][a-z0-9_]*_(\d{6,})\b")


class _RemoteCommandWatcher:
    """Collects the shard ids that each distributed transaction's remote commands name."""

    def __init__(self) -> None:
        self.shards: dict[str, set[int]] = {}
        self._current: str | None = None
        self._counter = 0

    def on_message(self, _connection: Any, message: Any) -> None:
        text = str(getattr(message, "message", ""))
        if not text.startswith("issuing "):
            return
        command = text.removeprefix("issuing ")
        started = _TRANSACTION_ID.search(command)
        if started:
            self._current = f"{started.group(1)}-{started.group(2)}"
        elif self._current is None or command.startswith(("COMMIT", "ROLLBACK", "PREPARE")):
            if command.startswith(("COMMIT", "ROLLBACK", "PREPARE")):
                return
            # A statement outside any remote transaction block: one of its own.
            self._counter += 1
            key = f"statement-{self._counter}"
            self.shards.setdefault(key, set()).update(int(s) for s in _SHARD_NAME.findall(command))
            return
        self.shards.setdefault(self._current, set()).update(int(s) for s in _SHARD_NAME.findall(command))

    async def shard_groups(self, database_url: str) -> dict[str, set[int]]:
        """Each transaction's shards as shard groups (co-located shards share a group)."""
        every = {shard for shards in self.shards.values() for shard in shards}
        if not every:
            return {key: set() for key in self.shards}
        connection = await asyncpg.connect(plain_url(database_url))
        try:
            rows = await connection.fetch(
                "SELECT s.shardid, "
                "  dense_rank() OVER (ORDER BY p.colocationid, s.shardminvalue::bigint) AS grp "
                "FROM pg_dist_shard s JOIN pg_dist_partition p USING (logicalrelid) "
                "WHERE p.partmethod = 'h'"
            )
        finally:
            await connection.close()
        group_of: dict[int, int] = {row["shardid"]: row["grp"] for row in rows}
        # Shards of reference tables (not hash-distributed) are everywhere: no group.
        return {
            key: {group_of[shard] for shard in shards if shard in group_of}
            for key, shards in self.shards.items()
        }

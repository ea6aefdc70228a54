"""Group commit: the API process's concurrent single postings go to PostgreSQL together.

Callers submit one posting (function, arguments) and await its answer. A few flushers take
whatever is queued when they get a connection, up to ``max_batch`` operations, and send it as
one call of ``ledger_post_batch`` (ledger/sql/ledger_batch_v1.sql): one round trip and one
commit for the lot. There is no timer: an idle process sends a lone posting at once, as a
plain single call; under load the batch is what arrived while the last call ran.

Each operation keeps its own idempotency key, answer and error: it runs in its own
subtransaction, so a refusal rolls back only itself. Answers are given only after the call
returned, and the call is its own transaction (autocommit), so an answer means committed. If
the call fails (connection lost, statement timeout, PostgreSQL gone) every operation of the
batch gets that error and none an answer.

Besides the postings, the final write of a member event (``activity_event_write``, which the
event pipeline submits with the single call it replaces, see activity.repository.write_event)
goes in the same batches: under load, events and postings share one commit.

On Citus (docs/group-commit.md, "On Citus") a batch holds postings of members of one shard
only: the committer reads the shards' hash ranges (``distribution.ShardMap``), takes from the
queue the postings of the oldest one's shard, and sends them as one call of
``ledger_post_batch_routed``, delegated to that shard's worker, where the batch is one
single-shard transaction. A posting that needs other shards (LY002) goes again alone, through
the coordinator as a single call does; a stale map (LY003, nothing written) is read again and
the batch's postings go alone. Events are not batched there: their tables are on the
coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from loyalty import distribution
from loyalty.errors import DomainError
from loyalty.idempotency import Posted
from loyalty.ledger.errors import ledger_error
from loyalty.ledger.repository import DOMAIN_SQLSTATE, post_on_driver
from loyalty.observability.metrics import count_group_commit
from loyalty.settings import Settings

# An event's final write (activity/sql/activity_events_v1.sql): it locks the member's facts
# and tier rows before the budgets of its earns.
EVENT_WRITE = "activity_event_write"
# The functions ledger_post_batch dispatches to.
BATCHABLE = frozenset(
    {
        "ledger_earn",
        "ledger_spend",
        "ledger_hold",
        "ledger_capture",
        "ledger_void",
        "ledger_clawback",
        EVENT_WRITE,
    }
)
# Subtransactions that write, per operation (each gets a subtransaction id): a posting's block
# and an earn's budget fast path. An event's are given by its caller (one, and two per earn).
POSTING_WEIGHT = 2
_BATCH_SQL = (
    "SELECT op_replayed, op_body, op_sqlstate, op_message, op_detail FROM ledger_post_batch($1::jsonb)"
)
_ROUTED_BATCH_SQL = (
    "SELECT op_replayed, op_body, op_sqlstate, op_message, op_detail"
    " FROM ledger_post_batch_routed($1::bigint, $2::jsonb)"
)
# A whole batch lost to another batch's locks: it committed nothing, so it is sent again in halves.
_RETRY_SPLIT = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
_SINGLE_ATTEMPTS = 3
# The project's own SQLSTATEs (class LY): an operation's answer, not a reason to try it again.
_OWN_SQLSTATES = "LY"


class Refused(Exception):
    """An operation's own refusal under one of the project's SQLSTATEs (LY...) other than the
    ledger's LY000 (an event's stale plan, LYSTL, say): the caller's to handle, never retried
    here. ``sqlstate`` as on asyncpg's errors, so that a caller handles both alike."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def batch_order(function: str, params: dict[str, Any]) -> tuple[Any, ...]:
    """Operations of one batch run in this order, so that concurrent batches take their locks in
    the same order and rarely wait on each other in a cycle: events first, by member (an event
    locks its member's facts before its budgets); then postings by budget (an earn locks its
    budget before its member), then member; captures and voids, whose member is not known
    here, last."""
    if function == EVENT_WRITE:
        return (params["p_programme"], 0, False, "", "", params["p_member"])
    hold = params.get("p_hold")
    return (
        params["p_programme"],
        1,
        hold is not None,
        params.get("p_budget") or "",
        params.get("p_member") or "",
        hold or 0,
    )


# An operation's call on its own, on a connection: what a batch of one, or a retry alone, sends.
Alone = Callable[[Any], Awaitable[Posted]]


@dataclass(slots=True)
class _Op:
    function: str
    params: dict[str, Any]
    future: asyncio.Future[Posted] = field(repr=False)
    queued_at: float = 0.0
    alone: Alone | None = field(default=None, repr=False)
    weight: int = POSTING_WEIGHT
    # On Citus: the key the posting is distributed by (its member's, or its hold's id).
    key: int | None = None


class GroupCommitter:
    """One per API process, on the posting pool. ``post`` is what ``repository.post`` calls."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        flushers: int = 3,
        max_batch: int = 24,
        acquire_timeout: float = 2.0,
        citus: bool | None = None,
    ) -> None:
        if flushers < 1 or max_batch < 1:
            raise ValueError("flushers and max_batch must be at least 1")
        self.pool = pool
        self.flushers = flushers
        self.max_batch = max_batch
        self.acquire_timeout = acquire_timeout
        self._queue: deque[_Op] = deque()
        self._active = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # On Citus: batches per shard, by this map (read by the first flusher, again when stale).
        # None: the first flusher asks the database (the API says, from distribution.detect).
        self.citus = citus
        self.shards: distribution.ShardMap | None = None

    async def post(
        self, function: str, params: dict[str, Any], *, alone: Alone | None = None, weight: int | None = None
    ) -> Posted:
        """One operation, answered once its batch has committed; a refusal of the ledger raises
        its domain error, another refusal of the project's (LY...) ``Refused``.

        ``params`` are the function's arguments in order, as the batch sends them (JSON);
        ``alone`` the operation's own call when it is not a plain posting function's (it then
        raises asyncpg's errors as they come); ``weight`` its subtransactions, when not a
        posting's."""
        if function not in BATCHABLE:
            async with self.pool.acquire(timeout=self.acquire_timeout) as conn:
                return await (alone or _posting(function, params, self.citus))(conn)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Posted] = loop.create_future()
        op = _Op(function, params, future, loop.time(), alone, POSTING_WEIGHT if weight is None else weight)
        self._queue.append(op)
        if self._active < self.flushers:
            self._active += 1
            task = asyncio.create_task(self._flush())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def load_shards(self, timeout: float = 2.0) -> None:
        """Read the shard map ahead of the first batch (Citus); a database that cannot answer
        now leaves it to the first flush."""
        try:
            async with self.pool.acquire(timeout=timeout) as conn:
                self.shards = await distribution.ShardMap.load(conn)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            self.shards = None

    async def close(self) -> None:
        """Wait for the batches under way (the pool is closed after this)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _flush(self) -> None:
        try:
            while self._queue:
                try:
                    conn = await self.pool.acquire(timeout=self.acquire_timeout)
                except Exception as exc:  # no connection: the operations waiting get the error
                    _fail(self._take(), exc)
                    continue
                try:
                    if self.citus is not False and self.shards is None:
                        try:
                            if self.citus is None:
                                self.citus = bool(await conn.fetchval(distribution.CITUS_PRESENT))
                            if self.citus:
                                self.shards = await distribution.ShardMap.load(conn)
                        except Exception as exc:  # noqa: BLE001 - as for a failed call
                            _fail(self._take(), exc)
                            continue
                    while self._queue:
                        if not await self._send(conn, self._take()):
                            break  # the connection may be broken: release it, take another
                finally:
                    await _release(self.pool, conn)
        finally:
            # No await between the last look at the queue and this: a posting queued after it
            # starts a flusher of its own.
            self._active -= 1

    def _take(self) -> list[_Op]:
        if self.shards is not None:
            return self._take_shard(self.shards)
        batch: list[_Op] = []
        # Subtransactions per call at most: max_batch postings' worth (see docs/group-commit.md).
        room = self.max_batch * POSTING_WEIGHT
        # A posting waits for a flusher no longer than a request waits for a pooled connection:
        # with PostgreSQL hung, the answer is a 503 within the API's bounds, not a long queue.
        too_old = asyncio.get_running_loop().time() - self.acquire_timeout
        while self._queue and len(batch) < self.max_batch:
            if batch and self._queue[0].weight > room:
                break  # the next call takes it
            op = self._queue.popleft()
            if op.future.done():  # a caller that went away before its turn is dropped
                continue
            if op.queued_at < too_old:
                _settle_error(op, TimeoutError("no posting connection in time (group commit queue)"))
                continue
            batch.append(op)
            room -= op.weight
        return batch

    def _take_shard(self, shards: distribution.ShardMap) -> list[_Op]:
        """Citus: the oldest posting's and the others queued for its shard, in queue order, as
        ``_take`` bounds them; postings of other shards stay queued, in their order."""
        batch: list[_Op] = []
        room = self.max_batch * POSTING_WEIGHT
        too_old = asyncio.get_running_loop().time() - self.acquire_timeout
        shard: int | None = None
        kept: list[_Op] = []
        while self._queue and len(batch) < self.max_batch:
            op = self._queue.popleft()
            if op.future.done():
                continue
            if op.queued_at < too_old:
                _settle_error(op, TimeoutError("no posting connection in time (group commit queue)"))
                continue
            if op.key is None:
                op.key = distribution.op_key(op.function, op.params)
            try:
                # An event (its tables are on the coordinator) or a key the map does not cover
                # goes alone, as a batch of one.
                its = None if op.key is None else shards.shard_of(op.key)
            except LookupError:
                its = None
            if its is None:
                if batch:
                    kept.append(op)
                    continue
                batch.append(op)
                break
            if shard is None:
                shard = its
            elif its != shard:
                kept.append(op)
                continue
            if batch and op.weight > room:
                kept.append(op)
                break
            batch.append(op)
            room -= op.weight
        self._queue.extendleft(reversed(kept))
        return batch

    async def _send(self, conn: Any, batch: list[_Op]) -> bool:
        """Run one batch and settle its futures; False if the call itself failed."""
        if not batch:
            return True
        count_group_commit(len(batch))
        try:
            await self._run(conn, sorted(batch, key=lambda op: batch_order(op.function, op.params)))
        except Exception as exc:
            _fail(batch, exc)
            return False
        return True

    async def _run(self, conn: Any, batch: list[_Op]) -> None:
        if len(batch) == 1:
            # A batch of one is the plain single call: no JSON, and exactly today's behaviour.
            op = batch[0]
            try:
                result = await _single(conn, op, self.citus)
            except Exception as exc:
                _settle_error(op, exc)
                if not isinstance(exc, DomainError | Refused | asyncpg.PostgresError):
                    raise  # the connection's failure, not this operation's
                return
            _settle(op, result)
            return
        payload = msgspec.json.encode([{"f": op.function, "a": list(op.params.values())} for op in batch])
        try:
            if self.shards is None:
                rows = await conn.fetch(_BATCH_SQL, payload.decode())
            else:
                rows = await conn.fetch(_ROUTED_BATCH_SQL, self._route(batch), payload.decode())
        except _RETRY_SPLIT:
            await self._split(conn, batch)
            return
        except asyncpg.PostgresError as exc:
            if exc.sqlstate != distribution.STALE_SHARD_MAP:
                raise
            # The shards moved under the map: nothing was written. Read it again, and send the
            # batch's postings alone (each is routed by its own member).
            count_group_commit(0, outcome="stale_map")
            self.shards = await distribution.ShardMap.load(conn)
            for op in batch:
                await self._run(conn, [op])
            return
        again: list[_Op] = []
        for op, row in zip(batch, rows, strict=True):
            replayed, body, sqlstate, message, detail = row
            if sqlstate is None:
                # An event replayed has no results: null, as its single call answers.
                _settle(op, Posted(replayed=replayed, body=b"null" if body is None else body.encode()))
            elif sqlstate == distribution.NEEDS_COORDINATOR:
                # Citus: more than the budget shard beside its member holds; alone, the call
                # goes again through the coordinator (repository.post_on_driver).
                again.append(op)
            elif sqlstate == DOMAIN_SQLSTATE:
                _settle_error(op, ledger_error(message, detail or None))
            elif sqlstate.startswith(_OWN_SQLSTATES):
                _settle_error(op, Refused(sqlstate, message))
            else:
                # Not a refusal of the ledger (a deadlock with another batch, say): its
                # subtransaction left nothing behind, and it runs again alone, as a single call.
                again.append(op)
        for op in again:
            count_group_commit(0, outcome="retried")
            await self._run(conn, [op])

    async def _split(self, conn: Any, batch: list[_Op]) -> None:
        # Nothing of this batch committed: send it again in halves, down to single calls.
        count_group_commit(0, outcome="split")
        half = len(batch) // 2
        await self._run(conn, batch[:half])
        await self._run(conn, batch[half:])

    def _route(self, batch: list[_Op]) -> int:
        """The key the batch is delegated by: its shard's anchor, else its first posting's key."""
        first = batch[0].key
        assert first is not None and self.shards is not None
        try:
            anchor = self.shards.anchor(self.shards.shard_of(first))
        except LookupError:
            anchor = None
        return first if anchor is None else anchor


def _posting(function: str, params: dict[str, Any], citus: bool | None = None) -> Alone:
    async def call(conn: Any) -> Posted:
        return await post_on_driver(conn, function, params, citus=citus)

    return call


async def _single(conn: Any, op: _Op, citus: bool | None = None) -> Posted:
    """One operation on its own. Alone it meets another batch in a deadlock only rarely; as it
    rolled back and committed nothing, it is tried again, a few times, before it fails."""
    call = op.alone or _posting(op.function, op.params, citus)
    for attempt in range(_SINGLE_ATTEMPTS):
        try:
            return await call(conn)
        except _RETRY_SPLIT:
            if attempt == _SINGLE_ATTEMPTS - 1:
                raise
            count_group_commit(0, outcome="retried")
    raise AssertionError("unreachable")


def _settle(op: _Op, result: Posted) -> None:
    if not op.future.done():
        op.future.set_result(result)


def _settle_error(op: _Op, exc: BaseException) -> None:
    if not op.future.done():
        op.future.set_exception(exc)


def _fail(batch: list[_Op], exc: BaseException) -> None:
    for op in batch:
        _settle_error(op, exc)


def for_settings(pool: asyncpg.Pool, settings: Settings, *, citus: bool = False) -> GroupCommitter | None:
    """The process's committer, or None when group commit is off (each posting its own call);
    on Citus (``citus``) it batches per shard."""
    if not settings.group_commit:
        return None
    return GroupCommitter(
        pool,
        flushers=settings.group_commit_flushers,
        max_batch=settings.group_commit_max_batch,
        acquire_timeout=settings.db_timeout_seconds,
        citus=citus,
    )


async def _release(pool: asyncpg.Pool, conn: Any) -> None:
    """Back to the pool; a connection that cannot be reset (PostgreSQL stopped or frozen under
    it) is closed instead. The flusher goes on: an exception here would end its task unseen."""
    try:
        await pool.release(conn)
    except Exception:  # noqa: BLE001 - the pool has already given up this connection
        with contextlib.suppress(Exception):
            conn.terminate()

"""What each HTTP workload sends. Request bytes are built from pre-encoded parts per request.

Every write carries a fresh Idempotency-Key (a per-run prefix and a counter): the service
claims and stores a key on every write, and the benchmark must pay that cost like a client.
"""

from __future__ import annotations

import itertools
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from bench.httpload import HttpConnection, Operation, Recorder, encode_request

MEMBERS = 10_000
BUDGETS = 100
HOT_BUDGET = "b1"
EARN_POINTS = 10
SPEND_POINTS = 10
BATCH_ITEMS = 10_000
# Distinct batch bodies cycled through; building 10,000-item JSON per request would cost the
# client more than the server's parse.
BATCH_BODIES = 16


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    api_key: str


@dataclass(frozen=True)
class Workload:
    name: str
    operation: Operation
    # Units per operation for the headline rate (10,000 points transfers per batch request).
    units_per_op: int = 1
    unit: str = "ops"


class RequestFactory:
    """POSTs with a fixed head, a unique Idempotency-Key and a JSON body.

    ``path`` may hold one ``{}``, filled per request by ``path_arg`` (a hold id, say).
    """

    def __init__(self, target: Target, path: str) -> None:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
            f"Authorization: Bearer {target.api_key}\r\nContent-Type: application/json\r\n"
            f"Idempotency-Key: {secrets.token_hex(6)}-"
        ).encode()
        self._before, _, self._after = head.partition(b"{}")
        self._counter = itertools.count()

    def build(self, body: bytes, path_arg: int | None = None) -> bytes:
        key = str(next(self._counter)).encode()
        middle = b"" if path_arg is None else str(path_arg).encode()
        return b"".join(
            (
                self._before, middle, self._after, key,
                b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n\r\n", body,
            )
        )  # fmt: skip


async def timed(conn: HttpConnection, recorder: Recorder, step: str, payload: bytes) -> tuple[int, bytes]:
    started = time.perf_counter_ns()
    status, body = await conn.request(payload)
    recorder.step(step, status, started, time.perf_counter_ns())
    return status, body


def earn(target: Target, *, hot: bool) -> Workload:
    factory = RequestFactory(target, "/v1/earn")
    randint = random.randint

    async def operation(conn: HttpConnection, recorder: Recorder) -> None:
        budget = HOT_BUDGET if hot else f"b{randint(1, BUDGETS)}"
        body = f'{{"member_id":"m{randint(1, MEMBERS)}","budget":"{budget}","points":{EARN_POINTS}}}'
        started = time.perf_counter_ns()
        await timed(conn, recorder, "earn", factory.build(body.encode()))
        recorder.op_done(started, time.perf_counter_ns())

    return Workload("earn-hot" if hot else "earn-spread", operation)


def spend(target: Target) -> Workload:
    factory = RequestFactory(target, "/v1/spend")
    randint = random.randint

    async def operation(conn: HttpConnection, recorder: Recorder) -> None:
        body = f'{{"member_id":"m{randint(1, MEMBERS)}","points":{SPEND_POINTS}}}'
        started = time.perf_counter_ns()
        await timed(conn, recorder, "spend", factory.build(body.encode()))
        recorder.op_done(started, time.perf_counter_ns())

    return Workload("spend", operation)


def hold_capture(target: Target) -> Workload:
    """A checkout: reserve points, then capture the hold. One op is the pair."""
    holds = RequestFactory(target, "/v1/holds")
    captures = RequestFactory(target, "/v1/holds/{}/capture")
    randint = random.randint

    async def operation(conn: HttpConnection, recorder: Recorder) -> None:
        body = f'{{"member_id":"m{randint(1, MEMBERS)}","points":{SPEND_POINTS}}}'
        started = time.perf_counter_ns()
        status, answer = await timed(conn, recorder, "hold", holds.build(body.encode()))
        if status != 201:
            return
        hold_id = json.loads(answer)["hold_id"]
        status, _ = await timed(conn, recorder, "capture", captures.build(b"{}", hold_id))
        if status == 200:
            recorder.op_done(started, time.perf_counter_ns())

    return Workload("hold+capture", operation)


def batch_bodies(count: int = BATCH_BODIES, items: int = BATCH_ITEMS) -> list[bytes]:
    rng = random.Random(7)
    bodies = []
    for _ in range(count):
        entries = [
            {"member_id": f"m{rng.randint(1, MEMBERS)}", "budget": f"b{rng.randint(1, BUDGETS)}", "points": 1}
            for _ in range(items)
        ]
        bodies.append(json.dumps({"items": entries}, separators=(",", ":")).encode())
    return bodies


def batch_earn(target: Target) -> Workload:
    factory = RequestFactory(target, "/v1/earn/batch")
    bodies = itertools.cycle(batch_bodies())

    async def operation(conn: HttpConnection, recorder: Recorder) -> None:
        started = time.perf_counter_ns()
        status, _ = await timed(conn, recorder, "batch", factory.build(next(bodies)))
        if 200 <= status < 300:
            recorder.op_done(started, time.perf_counter_ns())

    return Workload("batch-earn", operation, units_per_op=BATCH_ITEMS, unit="points-transfers")


def event_requests(target: Target) -> Callable[[int], bytes]:
    """The n-th order_completed event's request: a fresh event_id, a random member and amount."""
    factory = RequestFactory(target, "/v1/events")
    prefix = secrets.token_hex(4)
    randint = random.randint

    def make(n: int) -> bytes:
        body = (
            f'{{"event_id":"e-{prefix}-{n}","member_id":"m{randint(1, MEMBERS)}","type":"order_completed",'
            f'"order_ref":"o-{prefix}-{n}","amount":{randint(1_000, 60_000)},"currency":"CNY"}}'
        )
        return factory.build(body.encode())

    return make


def events(target: Target) -> Workload:
    """order_completed events, each with a fresh event_id: facts, earning rules and the tier check
    run in the request (see bench/tiers.py for the rules and the ladder)."""
    make = event_requests(target)
    counter = itertools.count()

    async def operation(conn: HttpConnection, recorder: Recorder) -> None:
        request = make(next(counter))
        started = time.perf_counter_ns()
        status, _ = await timed(conn, recorder, "event", request)
        if 200 <= status < 300:
            recorder.op_done(started, time.perf_counter_ns())

    return Workload("events", operation)


def minimal_select(target: Target) -> Workload:
    """The reference app: GET one row by primary key."""
    head = encode_request("GET", "/accounts/{}", {"Host": f"{target.host}:{target.port}"})
    before, after = head.split(b"{}", 1)
    randint = random.randint

    async def operation(conn: HttpConnection, recorder: Recorder) -> None:
        started = time.perf_counter_ns()
        # Members are raw_accounts 1001..11000 (see bench/pgbench.py).
        account = 1000 + randint(1, MEMBERS)
        await timed(conn, recorder, "select", before + str(account).encode() + after)
        recorder.op_done(started, time.perf_counter_ns())

    return Workload("minimal-select", operation)


def build(name: str, target: Target) -> Workload:
    factories = {
        "earn-spread": lambda: earn(target, hot=False),
        "earn-hot": lambda: earn(target, hot=True),
        "spend": lambda: spend(target),
        "hold+capture": lambda: hold_capture(target),
        "batch-earn": lambda: batch_earn(target),
        "minimal-select": lambda: minimal_select(target),
        # The same request to the raw ASGI apps of bench/bare_app.py: the bare-stack ceiling.
        "bare-http": lambda: replace(minimal_select(target), name="bare-http"),
        "bare-select": lambda: replace(minimal_select(target), name="bare-select"),
        "events": lambda: events(target),
    }
    if name not in factories:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(factories)}")
    return factories[name]()


HTTP_WORKLOADS = ("earn-spread", "earn-hot", "spend", "hold+capture", "batch-earn", "events")
# Not HTTP: a full tier re-evaluation of a million members, timed in-process (bench/tiers.py).
TIER_REEVAL = "tier-reeval"
# Not a closed-loop HTTP workload: the checkout check driven open-loop (bench/checkout.py).
CHECKOUT = "checkout"
# The references every target is a ratio to, served by their own apps (bench/minimal_app.py,
# bench/bare_app.py), in this order: HTTP alone, HTTP + one SELECT, the same through Litestar.
REFERENCES = ("bare-http", "bare-select", "minimal-select")
# Measured inside the checkout benchmark (bench/checkout.py), closed loop; --profile accepts it.
CONSUME = "consume"

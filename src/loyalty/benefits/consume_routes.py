"""POST /v1/benefits/{code}/consume and /reserve, each declared once (fast_routes.FastRoute):
the declaration is the lane that serves the route and the handler that documents it.

Each request is one benefit_consume call on the posting pool (autocommit: the statement is its
own transaction and has committed before the answer is sent), two when campaigns giving the
benefit are running (their segment rules are evaluated in Python between the calls; see
consumption.consume_with). No Idempotency-Key header: (benefit, order_reference) is the key,
and a replay answers 201 with ``replayed: true`` in the body, as it always has."""

from __future__ import annotations

import functools

import asyncpg
import msgspec
from litestar.params import FromPath

from loyalty.benefits import consumption, repository
from loyalty.benefits import schemas as s
from loyalty.benefits.checkout import CHECKOUT_ROLES
from loyalty.http.fast_routes import Arguments, FastRoute, Reply
from loyalty.http.principal import Principal

_ENCODE = msgspec.json.Encoder()


async def _use(conn: asyncpg.Connection, who: Principal, args: Arguments, *, reserve: bool) -> Reply:
    result = await consumption.consume_with(
        functools.partial(repository.consume_pooled, conn), who, args.path["code"], args.body, reserve=reserve
    )
    return Reply(False, _ENCODE.encode(result))


async def _consume(conn: asyncpg.Connection, who: Principal, args: Arguments) -> Reply:
    return await _use(conn, who, args, reserve=False)


async def _reserve(conn: asyncpg.Connection, who: Principal, args: Arguments) -> Reply:
    return await _use(conn, who, args, reserve=True)


CONSUME_BENEFIT = FastRoute(
    method="POST",
    path="/v1/benefits/{code:str}/consume",
    summary="One use for an order, idempotent by order_reference; 409 quota_exhausted when none is left.",
    roles=CHECKOUT_ROLES,
    result=s.ConsumptionResult,
    call=_consume,
    body=s.ConsumeRequest,
    path_params={"code": FromPath[str]},
    idempotent=False,
    tags=("benefits",),
    description="The use (replayed: true when the order was used before)",
)

RESERVE_BENEFIT = FastRoute(
    method="POST",
    path="/v1/benefits/{code:str}/reserve",
    summary="Hold one use for a checkout; commit or release it, or it is released at the timeout.",
    roles=CHECKOUT_ROLES,
    result=s.ConsumptionResult,
    call=_reserve,
    body=s.ReserveRequest,
    path_params={"code": FromPath[str]},
    idempotent=False,
    tags=("benefits",),
    description="The reservation (replayed: true when the order was used before)",
)

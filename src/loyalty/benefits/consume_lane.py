"""The lean path of POST /v1/benefits/{code}/consume and /reserve: one benefit_consume call on
the posting pool (autocommit, so the statement is its own transaction and commits before the
answer is sent), two when campaigns giving the benefit are running (their segment rules are
evaluated in Python between the calls).

Route-level ASGI middleware like web.PostingLane and checkout.CheckLane: the role check, the
strict body decode and msgspec JSON out, without Litestar's per-request DI, signature model and
response machinery. The handlers in routes.py document the routes and are never reached; their
errors are raised, so the one problem map answers them."""

from __future__ import annotations

import functools
from typing import Any

import asyncpg
import msgspec

from loyalty.auth.core import Principal
from loyalty.benefits import consumption, repository
from loyalty.web import _read_body, decode_body, require_role, send_json

_ENCODE = msgspec.json.Encoder()


class ConsumeLane:
    def __init__(self, app: Any, *, roles: tuple[str, ...], body_type: Any, reserve: bool) -> None:
        self.app = app
        self.roles = roles
        self.body_type = body_type
        self.reserve = reserve

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        principal: Principal = scope["user"]
        require_role(principal, self.roles)
        data = decode_body(await _read_body(receive), self.body_type)
        state = scope["litestar_app"].state
        pool: asyncpg.Pool = state.posting_pool
        async with pool.acquire(timeout=state.pool_timeout) as conn:
            result = await consumption.consume_with(
                functools.partial(repository.consume_pooled, conn),
                principal,
                scope["path_params"]["code"],
                data,
                reserve=self.reserve,
            )
        await send_json(send, 201, _ENCODE.encode(result))

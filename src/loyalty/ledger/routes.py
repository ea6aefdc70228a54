"""Thin HTTP routes of the ledger: parse, one service call, answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from asyncpg.pool import PoolConnectionProxy
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.http.edge import PathId, TransactionKind
from loyalty.http.fast_routes import Call, FastRoute, handlers
from loyalty.http.lanes import IdempotencyKey, allow, posted
from loyalty.http.principal import Principal
from loyalty.http.routes import (
    ECOMMERCE_ROLES,
    GRANTS,
    GRANTS_ROLES,
    POSTING,
    READ,
    STAFF_READ,
)
from loyalty.http.routes import posted_spec as _spec
from loyalty.ledger import schemas as s
from loyalty.ledger import service


def _fast(
    path: str, summary: str, roles: tuple[str, ...], result: type, call: Call, **options: Any
) -> FastRoute:
    return FastRoute(
        method="POST",
        path=f"/v1{path}",
        summary=summary,
        roles=roles,
        result=result,
        call=call,
        tags=("ledger",),
        connection="grouped",
        **options,
    )


HOLD_ID = {"hold_id": PathId}
# The ledger's hot writes: one posting-function call each, served by their lanes.
FAST_ROUTES = (
    _fast(
        "/earn",
        "A budget pays a member: points now, or pending until a return window closes.",
        GRANTS_ROLES,
        s.EarnResult,
        lambda c, who, a: service.earn(c, who, a.body, a.key),
        body=s.EarnRequest,
    ),
    _fast(
        "/spend",
        "Points leave the member's available balance, soonest-expiring first.",
        ECOMMERCE_ROLES,
        s.SpendResult,
        lambda c, who, a: service.spend(c, who, a.body, a.key),
        body=s.SpendRequest,
    ),
    _fast(
        "/holds",
        "Reserve points for a checkout; capture or void them later, or they return at the timeout.",
        ECOMMERCE_ROLES,
        s.HoldResult,
        lambda c, who, a: service.hold(c, who, a.body, a.key),
        body=s.HoldRequest,
    ),
    _fast(
        "/holds/{hold_id:int}/capture",
        "Take all or part of a hold; the rest goes back to the member.",
        ECOMMERCE_ROLES,
        s.HoldResult,
        lambda c, who, a: service.capture(c, who, a.path["hold_id"], a.body, a.key),
        body=s.CaptureRequest,
        path_params=HOLD_ID,
        status=200,
    ),
    _fast(
        "/holds/{hold_id:int}/void",
        "Give a hold's points back to the member.",
        ECOMMERCE_ROLES,
        s.HoldResult,
        lambda c, who, a: service.void(c, who, a.path["hold_id"], a.key),
        path_params=HOLD_ID,
        status=200,
    ),
    _fast(
        "/clawbacks",
        "A refund: reverse what an order's reference earned, all or part.",
        ECOMMERCE_ROLES,
        s.ClawbackResult,
        lambda c, who, a: service.clawback(c, who, a.body, a.key),
        body=s.ClawbackRequest,
    ),
)


class PointsController(Controller):
    path = "/v1"
    tags = ["ledger"]

    @post(
        "/earn/batch",
        dependencies=POSTING,
        guards=[GRANTS],
        responses=_spec(s.BatchEarnResult),
        status_code=201,
        request_max_body_size=32 * 1024 * 1024,
    )
    async def earn_batch(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        data: JSONBody[s.BatchEarnRequest],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """Many earns at once (imports, campaign grants): all or nothing, or a result per item."""
        return posted(await service.earn_batch(tx, who, data, idempotency_key))

    @get("/holds/{hold_id:int}", dependencies=READ, guards=[STAFF_READ])
    async def get_hold(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], hold_id: PathId
    ) -> s.HoldResult:
        return await service.get_hold(tx, who, hold_id)

    @post(
        "/adjustments",
        dependencies=POSTING,
        guards=[allow("operator")],
        responses=_spec(s.AdjustResult),
        status_code=201,
    )
    async def adjust(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        data: JSONBody[s.AdjustRequest],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """An operator's manual credit or debit, with a mandatory reason kept in the audit trail."""
        return posted(await service.adjust(tx, who, data, idempotency_key))

    @post(
        "/transfers",
        dependencies=POSTING,
        guards=[allow("ecommerce", "crm", "operator")],
        responses=_spec(s.TransferResult),
        status_code=201,
    )
    async def transfer(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        data: JSONBody[s.TransferRequest],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """Points from one member to another, when the programme allows it."""
        return posted(await service.transfer(tx, who, data, idempotency_key))

    @get("/transactions/{txn_id:int}", dependencies=READ, guards=[STAFF_READ])
    async def transaction(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], txn_id: PathId
    ) -> dict[str, Any]:
        """One transaction with its entries."""
        return await service.transaction(tx, who, txn_id)

    @get("/transactions", dependencies=READ, guards=[STAFF_READ])
    async def by_reference(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        reference: Annotated[str, QueryParameter(min_length=1, max_length=200)],
    ) -> list[Any]:
        """Every transaction that carries an external reference (an order id, say)."""
        return await service.transactions_by_reference(tx, who, reference)


class MemberPointsController(Controller):
    path = "/v1/members/{member_id:str}"
    tags = ["ledger"]
    guards = [STAFF_READ]
    dependencies = READ

    @get("/balance")
    async def balance(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        member_id: FromPath[str],
        expiring_within_days: Annotated[int, QueryParameter(ge=1, le=366)] = 30,
    ) -> s.Balance:
        """Available, pending and held points, and how many expire within the given days."""
        return await service.balance(tx, who, member_id, expiring_within_days)

    @get("/expiring")
    async def expiring(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        member_id: FromPath[str],
        days: Annotated[int, QueryParameter(ge=1, le=366)] = 30,
    ) -> s.Expiring:
        return await service.expiring(tx, who, member_id, days)

    @get("/transactions")
    async def history(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        member_id: FromPath[str],
        cursor: Annotated[str | None, QueryParameter(max_length=100)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        kind: FromQuery[list[TransactionKind] | None] = None,
        reference: FromQuery[str | None] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
    ) -> s.HistoryPage:
        """The member's transactions, newest first; pass next_cursor to read on."""
        return await service.history(
            tx,
            who,
            member_id,
            cursor=cursor,
            limit=limit,
            kinds=kind,
            reference=reference,
            since=since,
            until=until,
        )


class BudgetController(Controller):
    path = "/v1/budgets"
    tags = ["budgets"]

    @post(
        "/", dependencies=POSTING, guards=[allow("operator")], responses=_spec(s.BudgetView), status_code=201
    )
    async def create(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        data: JSONBody[s.BudgetCreate],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """A budget with a points cap, a unit cost, an active period and alert thresholds."""
        return posted(await service.create_budget(tx, who, data, idempotency_key))

    @get("/", dependencies=READ, guards=[allow("operator", "marketing")])
    async def list(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> list[s.BudgetView]:
        return await service.list_budgets(tx, who)

    @get("/{code:str}", dependencies=READ, guards=[allow("operator", "marketing")])
    async def get(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], code: FromPath[str]
    ) -> s.BudgetView:
        """Allocated (cap), issued and remaining points, and the money cost issued."""
        return await service.get_budget(tx, who, code)

    @post(
        "/{code:str}/top-up",
        dependencies=POSTING,
        guards=[allow("operator")],
        responses=_spec(s.BudgetView),
        status_code=201,
    )
    async def top_up(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        code: FromPath[str],
        data: JSONBody[s.BudgetTopUp],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        return posted(await service.top_up_budget(tx, who, code, data, idempotency_key))

    @post(
        "/moves",
        dependencies=POSTING,
        guards=[allow("operator")],
        responses=_spec(s.BudgetMoveResult),
        status_code=201,
    )
    async def move(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        data: JSONBody[s.BudgetMove],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """Move unissued points from one budget to another."""
        return posted(await service.move_budget(tx, who, data, idempotency_key))

    @post(
        "/{code:str}/close",
        dependencies=POSTING,
        guards=[allow("operator")],
        responses=_spec(s.BudgetView, 200),
        status_code=200,
    )
    async def close(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        code: FromPath[str],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """Close a budget: it issues no more, and what it did not issue goes back to funding."""
        return posted(await service.close_budget(tx, who, code, idempotency_key), 200)


ROUTES: list[Any] = [
    *handlers(*FAST_ROUTES),
    PointsController,
    MemberPointsController,
    BudgetController,
]

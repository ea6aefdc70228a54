"""Thin HTTP routes of the ledger: parse, one service call, answer."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from asyncpg.pool import PoolConnectionProxy
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.middleware.base import DefineMiddleware
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.auth.core import Principal
from loyalty.edge import PathId, TransactionKind
from loyalty.ledger import schemas as s
from loyalty.ledger import service
from loyalty.programmes import repository as programmes
from loyalty.web import (
    IdempotencyKey,
    PostingCall,
    PostingLane,
    allow,
    posted,
    provide_grouped_posting,
    provide_posting,
    provide_read,
    provide_tx,
)

WRITE = {"tx": Provide(provide_tx)}
# Routes whose write is a single posting-function call (see web.provide_posting).
POSTING = {"tx": Provide(provide_posting)}
# A single batchable posting: through the group committer when it is on.
GROUPED = {"tx": Provide(provide_grouped_posting)}
READ = {"tx": Provide(provide_read)}
ECOMMERCE_ROLES = ("ecommerce", "operator")
GRANTS_ROLES = ("ecommerce", "marketing", "operator")
ECOMMERCE = allow(*ECOMMERCE_ROLES)
GRANTS = allow(*GRANTS_ROLES)
STAFF_READ = allow("operator", "ecommerce", "crm", "marketing")


def _lane(
    roles: tuple[str, ...], body_type: Any, call: PostingCall, status: int = 201
) -> list[DefineMiddleware]:
    """The route is served by web.PostingLane; its handler below documents it in OpenAPI."""
    return [DefineMiddleware(PostingLane, roles=roles, body_type=body_type, call=call, status=status)]


EARN_LANE = _lane(GRANTS_ROLES, s.EarnRequest, lambda c, who, data, key, _: service.earn(c, who, data, key))
SPEND_LANE = _lane(
    ECOMMERCE_ROLES, s.SpendRequest, lambda c, who, data, key, _: service.spend(c, who, data, key)
)
HOLD_LANE = _lane(
    ECOMMERCE_ROLES, s.HoldRequest, lambda c, who, data, key, _: service.hold(c, who, data, key)
)
CAPTURE_LANE = _lane(
    ECOMMERCE_ROLES,
    s.CaptureRequest,
    lambda c, who, data, key, path: service.capture(c, who, path["hold_id"], data, key),
    200,
)
VOID_LANE = _lane(
    ECOMMERCE_ROLES, None, lambda c, who, _, key, path: service.void(c, who, path["hold_id"], key), 200
)


def _spec(model: type, status: int = 201) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(data_container=model, description="Posted (or replayed: Idempotent-Replayed)")
    }


class PointsController(Controller):
    path = "/v1"
    tags = ["ledger"]

    @post(
        "/earn",
        dependencies=POSTING,
        guards=[GRANTS],
        middleware=EARN_LANE,
        responses=_spec(s.EarnResult),
        status_code=201,
    )
    async def earn(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        data: JSONBody[s.EarnRequest],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """A budget pays a member: points now, or pending until a return window closes."""
        return posted(await service.earn(tx, who, data, idempotency_key))

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

    @post(
        "/spend",
        dependencies=POSTING,
        guards=[ECOMMERCE],
        middleware=SPEND_LANE,
        responses=_spec(s.SpendResult),
        status_code=201,
    )
    async def spend(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        data: JSONBody[s.SpendRequest],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """Points leave the member's available balance, soonest-expiring first."""
        return posted(await service.spend(tx, who, data, idempotency_key))

    @post(
        "/holds",
        dependencies=POSTING,
        guards=[ECOMMERCE],
        middleware=HOLD_LANE,
        responses=_spec(s.HoldResult),
        status_code=201,
    )
    async def hold(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        data: JSONBody[s.HoldRequest],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """Reserve points for a checkout; capture or void them later, or they return at the timeout."""
        return posted(await service.hold(tx, who, data, idempotency_key))

    @post(
        "/holds/{hold_id:int}/capture",
        dependencies=POSTING,
        middleware=CAPTURE_LANE,
        guards=[ECOMMERCE],
        responses=_spec(s.HoldResult, 200),
        status_code=200,
    )
    async def capture(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        hold_id: PathId,
        data: JSONBody[s.CaptureRequest],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """Take all or part of a hold; the rest goes back to the member."""
        return posted(await service.capture(tx, who, hold_id, data, idempotency_key), 200)

    @post(
        "/holds/{hold_id:int}/void",
        dependencies=POSTING,
        middleware=VOID_LANE,
        guards=[ECOMMERCE],
        responses=_spec(s.HoldResult, 200),
        status_code=200,
    )
    async def void(
        self,
        tx: NamedDependency[PoolConnectionProxy],
        who: NamedDependency[Principal],
        hold_id: PathId,
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """Give a hold's points back to the member."""
        return posted(await service.void(tx, who, hold_id, idempotency_key), 200)

    @get("/holds/{hold_id:int}", dependencies=READ, guards=[STAFF_READ])
    async def get_hold(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], hold_id: PathId
    ) -> s.HoldResult:
        return await service.get_hold(tx, who, hold_id)

    @post(
        "/clawbacks",
        dependencies=GROUPED,
        guards=[ECOMMERCE],
        responses=_spec(s.ClawbackResult),
        status_code=201,
    )
    async def clawback(
        self,
        tx: NamedDependency[Any],  # the group committer, or a pooled connection (web.provide_grouped_posting)
        who: NamedDependency[Principal],
        data: JSONBody[s.ClawbackRequest],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """A refund: reverse what an order's reference earned, all or part."""
        return posted(await service.clawback(tx, who, data, idempotency_key))

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


class ReportController(Controller):
    path = "/v1/reports"
    tags = ["reports"]

    @get("/liability", dependencies=READ, guards=[allow("operator")])
    async def liability(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.LiabilityReport:
        """Outstanding points and their money value, and breakage to date, by budget."""
        programme = await programmes.by_id(tx, who.programme_id)
        return await service.liability(tx, who, programme["currency"])


ROUTES = [PointsController, MemberPointsController, BudgetController, ReportController]

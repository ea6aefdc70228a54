"""Member routes for brand systems, and the customer's own view (member tokens)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar import Controller, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.http.edge import TransactionKind
from loyalty.http.lanes import IdempotencyKey, allow, posted
from loyalty.http.principal import Principal
from loyalty.http.routes import READ, STAFF_READ, WRITE, posted_spec
from loyalty.idempotency import Posted
from loyalty.ledger import schemas as ls
from loyalty.ledger import service as ledger
from loyalty.members import schemas as s
from loyalty.members import service

MEMBER_WRITE = allow("crm", "ecommerce", "operator")


class MemberController(Controller):
    path = "/v1/members"
    tags = ["members"]

    @post(
        "/", dependencies=WRITE, guards=[MEMBER_WRITE], responses=posted_spec(s.MemberView), status_code=201
    )
    async def enrol(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.MemberCreate],
        idempotency_key: IdempotencyKey,
    ) -> Response[bytes]:
        """Enrol a member by the brand's customer id; this opens the member's points account."""
        replayed, body = await service.enrol(tx, who, data, idempotency_key)
        return posted(Posted(replayed=replayed, body=body))

    @get("/", dependencies=READ, guards=[STAFF_READ])
    async def list(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
    ) -> s.MemberPage:
        return await service.page(tx, who, cursor, limit)

    @get("/{member_id:str}", dependencies=READ, guards=[STAFF_READ])
    async def get(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], member_id: FromPath[str]
    ) -> s.MemberView:
        return await service.get(tx, who, member_id)

    @patch("/{member_id:str}", dependencies=WRITE, guards=[MEMBER_WRITE])
    async def update(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        member_id: FromPath[str],
        data: JSONBody[s.MemberUpdate],
    ) -> s.MemberView:
        """Merge attributes (a null value removes a key) or change the status."""
        return await service.update(tx, who, member_id, data)


class MeController(Controller):
    """What a customer's app reads with a member token: only that member's own data."""

    path = "/v1/me"
    tags = ["customer"]
    guards = [allow("member")]
    dependencies = READ

    @get("/")
    async def me(self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]) -> s.MemberView:
        return await service.get(tx, who, who.member_external_id or "")

    @get("/balance")
    async def balance(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> ls.Balance:
        return await ledger.balance(tx, who, who.member_external_id or "")

    @get("/expiring")
    async def expiring(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        days: Annotated[int, QueryParameter(ge=1, le=366)] = 30,
    ) -> ls.Expiring:
        return await ledger.expiring(tx, who, who.member_external_id or "", days)

    @get("/transactions")
    async def history(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        cursor: Annotated[str | None, QueryParameter(max_length=100)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
        kind: FromQuery[list[TransactionKind] | None] = None,
        since: FromQuery[datetime | None] = None,
        until: FromQuery[datetime | None] = None,
    ) -> ls.HistoryPage:
        return await ledger.history(
            tx,
            who,
            who.member_external_id or "",
            cursor=cursor,
            limit=limit,
            kinds=kind,
            reference=None,
            since=since,
            until=until,
        )


ROUTES = [MemberController, MeController]

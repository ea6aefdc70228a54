"""The programme's API keys (operators list and revoke them) and member tokens (for customer apps)."""

from __future__ import annotations

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.auth import schemas as s
from loyalty.auth import service
from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ, WRITE


class ApiKeyController(Controller):
    path = "/v1/keys"
    tags = ["keys"]
    guards = [allow("operator")]

    @get("/", dependencies=READ)
    async def list(self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]) -> s.KeyList:
        """The programme's API keys, revoked ones included; secrets are never shown."""
        return s.KeyList(items=[s.view(r) for r in await service.list_api_keys(tx, who.programme_id)])

    @post("/{key_id:int}/revoke", dependencies=WRITE, status_code=200)
    async def revoke(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], key_id: FromPath[int]
    ) -> s.KeyView:
        """Revoke a key of the programme; every API process refuses it within a second."""
        return s.view(await service.revoke_api_key(tx, key_id=key_id, programme_id=who.programme_id, who=who))


class MemberTokenController(Controller):
    path = "/v1/member-tokens"
    tags = ["members"]

    @post("/", dependencies=READ, guards=[allow("ecommerce", "crm")], status_code=201)
    async def issue(
        self,
        request: Request,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.TokenRequest],
    ) -> s.TokenView:
        """A short-lived token with which a customer app reads that one member's points."""
        return await service.issue_member_token(tx, who, data, request.app.state.settings.secret_key)


ROUTES = [ApiKeyController, MemberTokenController]

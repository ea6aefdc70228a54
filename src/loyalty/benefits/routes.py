"""Thin HTTP routes of benefits: operators define them, brand systems check and consume them,
marketing and CRM read who has what, customers see their own."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.benefits import schemas as s
from loyalty.benefits import service
from loyalty.benefits.checkout import CHECK_BENEFIT, CHECKOUT_ROLES
from loyalty.benefits.consume_routes import CONSUME_BENEFIT, RESERVE_BENEFIT
from loyalty.http.edge import PathId
from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ, STAFF_READ, WRITE
from loyalty.ledger import service as ledger
from loyalty.members import service as members

OPERATOR = allow("operator")
CAMPAIGNS = allow("operator", "marketing")
GRANTS = allow("operator", "crm")
CHECKOUT = allow(*CHECKOUT_ROLES)
MARKETING_READ = allow("operator", "marketing", "crm")
# Commit and release may name the order's member: on Citus the call then stays on their shard.
_SETTLE_MEMBER = Annotated[
    str | None,
    QueryParameter(
        min_length=1,
        max_length=128,
        description="The brand's customer id the order was used for (optional; faster on a cluster).",
    ),
]


class BenefitController(Controller):
    path = "/v1/benefits"
    tags = ["benefits"]

    @post("/", dependencies=WRITE, guards=[OPERATOR], status_code=201)
    async def create(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.BenefitCreate],
    ) -> s.BenefitView:
        """A benefit: its type and parameters, names in en and zh-CN, validity and channels."""
        return await service.create(tx, who, data)

    @get("/", dependencies=READ, guards=[STAFF_READ])
    async def index(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.BenefitList:
        return await service.list_all(tx, who)

    @get("/{code:str}", dependencies=READ, guards=[STAFF_READ])
    async def show(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], code: FromPath[str]
    ) -> s.BenefitView:
        return await service.get(tx, who, code)

    @patch("/{code:str}", dependencies=WRITE, guards=[OPERATOR])
    async def update(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        code: FromPath[str],
        data: JSONBody[s.BenefitUpdate],
    ) -> s.BenefitView:
        return await service.update(tx, who, code, data)

    @post(
        "/{code:str}/consumptions/{order_reference:str}/commit",
        dependencies=WRITE,
        guards=[CHECKOUT],
        status_code=200,
    )
    async def commit(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        code: FromPath[str],
        order_reference: FromPath[str],
        member_id: _SETTLE_MEMBER = None,
    ) -> s.ConsumptionResult:
        return await service.settle(tx, who, code, order_reference, commit=True, member=member_id)

    @post(
        "/{code:str}/consumptions/{order_reference:str}/release",
        dependencies=WRITE,
        guards=[CHECKOUT],
        status_code=200,
    )
    async def release(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        code: FromPath[str],
        order_reference: FromPath[str],
        member_id: _SETTLE_MEMBER = None,
    ) -> s.ConsumptionResult:
        """Drop a reservation, or give a committed use back when the order is cancelled."""
        return await service.settle(tx, who, code, order_reference, commit=False, member=member_id)

    @get("/{code:str}/members", dependencies=READ, guards=[MARKETING_READ])
    async def entitled(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        code: FromPath[str],
        cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
    ) -> s.EntitledMembers:
        """Members entitled to the benefit now (tier, running campaign or grant), keyset pages."""
        return await service.entitled_members(tx, who, code, cursor, limit)

    @get("/{code:str}/members/count", dependencies=READ, guards=[MARKETING_READ])
    async def entitled_count(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], code: FromPath[str]
    ) -> s.EntitledCount:
        return await service.entitled_count(tx, who, code)


class TierBenefitController(Controller):
    path = "/v1/tier-benefits"
    tags = ["benefits"]

    @get("/", dependencies=READ, guards=[STAFF_READ])
    async def index(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.TierBenefitList:
        return await service.list_tier_benefits(tx, who)

    @put("/{tier:str}", dependencies=WRITE, guards=[OPERATOR])
    async def replace(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        tier: FromPath[str],
        data: JSONBody[s.TierBenefitsSet],
    ) -> s.TierBenefitList:
        """Replace the benefits a tier includes, each with its parameters."""
        return await service.set_tier_benefits(tx, who, tier, data)


class CampaignController(Controller):
    path = "/v1/benefit-campaigns"
    tags = ["benefits"]

    @post("/", dependencies=WRITE, guards=[CAMPAIGNS], status_code=201)
    async def create(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.CampaignCreate],
    ) -> s.CampaignView:
        """Members of a segment get a benefit from starts_at to ends_at."""
        return await service.create_campaign(tx, who, data)

    @get("/", dependencies=READ, guards=[MARKETING_READ])
    async def index(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.CampaignList:
        return await service.list_campaigns(tx, who)


class MemberBenefitController(Controller):
    path = "/v1/members/{member_id:str}"
    tags = ["benefits"]

    @post("/benefit-grants", dependencies=WRITE, guards=[GRANTS], status_code=201)
    async def grant(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        member_id: FromPath[str],
        data: JSONBody[s.GrantCreate],
    ) -> s.GrantView:
        """An individual grant with a reason and an optional expiry (writes benefit.granted)."""
        return await service.grant(tx, who, member_id, data)

    @post("/benefit-grants/{grant_id:int}/revoke", dependencies=WRITE, guards=[GRANTS], status_code=204)
    async def revoke(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        member_id: FromPath[str],
        grant_id: PathId,
        data: JSONBody[s.RevokeRequest],
    ) -> None:
        await service.revoke(tx, who, member_id, grant_id, data)

    @get("/entitlements", dependencies=READ, guards=[STAFF_READ])
    async def entitlements(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], member_id: FromPath[str]
    ) -> s.Entitlements:
        """Every active benefit with its source, parameters, quota left and when it resets."""
        return await service.entitlements(tx, who, member_id)

    @get("/profile", dependencies=READ, guards=[MARKETING_READ])
    async def profile(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], member_id: FromPath[str]
    ) -> s.Profile:
        """CRM: the member, their points, tier and entitlements in one call."""
        member = await members.get(tx, who, member_id)
        balance = await ledger.balance(tx, who, member_id)
        ent = await service.entitlements(tx, who, member_id)
        return s.Profile(member=member, balance=balance, tier=ent.tier, entitlements=ent.items)


class MyBenefitsController(Controller):
    path = "/v1/me/benefits"
    tags = ["customer"]
    guards = [allow("member")]
    dependencies = READ

    @get("/")
    async def mine(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.Entitlements:
        """My benefits and what is left of each quota."""
        return await service.entitlements(tx, who, who.member_external_id or "")


ROUTES: list[Any] = [
    CHECK_BENEFIT.handler(),
    CONSUME_BENEFIT.handler(),
    RESERVE_BENEFIT.handler(),
    BenefitController,
    TierBenefitController,
    CampaignController,
    MemberBenefitController,
    MyBenefitsController,
]

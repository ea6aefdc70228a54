"""Thin routes of outbound webhooks: endpoints, the delivery log, redelivery, pings, settings."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, delete, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.http.edge import BIGINT_MAX, PathId
from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ, WRITE
from loyalty.webhooks import schemas as s
from loyalty.webhooks import service
from loyalty.webhooks.targets import TargetPolicy

OPERATOR = allow("operator")


def _policy(request: Request) -> TargetPolicy:
    # A deployment setting: nothing a programme sends can widen it.
    return TargetPolicy.from_settings(request.app.state.settings)


class WebhookEndpointController(Controller):
    path = "/v1/webhooks/endpoints"
    tags = ["webhooks"]
    guards = [OPERATOR]

    @post("/", dependencies=WRITE, status_code=201)
    async def create(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.EndpointCreate],
        request: Request,
    ) -> s.EndpointWithSecret:
        """Register an endpoint; the answer shows its signing secret, this once."""
        return await service.create_endpoint(tx, who, data, policy=_policy(request))

    @get("/", dependencies=READ)
    async def list(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.EndpointList:
        return await service.list_endpoints(tx, who)

    @get("/{endpoint_id:int}", dependencies=READ)
    async def get(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        endpoint_id: PathId,
    ) -> s.EndpointView:
        return await service.get_endpoint(tx, who, endpoint_id)

    @patch("/{endpoint_id:int}", dependencies=WRITE)
    async def update(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        endpoint_id: PathId,
        data: JSONBody[s.EndpointUpdate],
        request: Request,
    ) -> s.EndpointView:
        """Change the URL, the event types or the description; active=false pauses deliveries."""
        return await service.update_endpoint(tx, who, endpoint_id, data, policy=_policy(request))

    @delete("/{endpoint_id:int}", dependencies=WRITE, status_code=204)
    async def remove(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        endpoint_id: PathId,
    ) -> None:
        """Remove the endpoint and its delivery log."""
        await service.delete_endpoint(tx, who, endpoint_id)

    @post("/{endpoint_id:int}/rotate-secret", dependencies=WRITE, status_code=200)
    async def rotate(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        endpoint_id: PathId,
    ) -> s.EndpointWithSecret:
        return await service.rotate_secret(tx, who, endpoint_id)

    @post("/{endpoint_id:int}/test", dependencies=READ, status_code=200)
    async def test(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        endpoint_id: PathId,
        request: Request,
    ) -> s.PingResult:
        """Send a signed webhook.ping now and show the endpoint's answer."""
        return await service.ping(tx, who, endpoint_id, policy=_policy(request))


class WebhookDeliveryController(Controller):
    path = "/v1/webhooks/deliveries"
    tags = ["webhooks"]
    guards = [OPERATOR]

    @get("/", dependencies=READ)
    async def list(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        endpoint: Annotated[int | None, QueryParameter(ge=1, le=BIGINT_MAX)] = None,
        status: Annotated[str | None, QueryParameter(max_length=20)] = None,
        cursor: Annotated[str | None, QueryParameter(max_length=100)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
    ) -> s.DeliveryPage:
        """The delivery log, newest first."""
        return await service.deliveries(
            tx, who, endpoint_id=endpoint, status=status, cursor=cursor, limit=limit
        )

    @post("/{delivery_id:int}/redeliver", dependencies=WRITE, status_code=202)
    async def redeliver(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        delivery_id: PathId,
    ) -> s.DeliveryView:
        """Queue the delivery again (with a fresh retry budget); the worker sends it shortly."""
        return await service.redeliver(tx, who, delivery_id)


class WebhookSettingsController(Controller):
    path = "/v1/webhooks/settings"
    tags = ["webhooks"]
    guards = [OPERATOR]

    @get("/", dependencies=READ)
    async def get(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.WebhookSettingsView:
        return await service.get_settings(tx, who)

    @put("/", dependencies=WRITE)
    async def put(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.WebhookSettingsUpdate],
    ) -> s.WebhookSettingsView:
        return await service.put_settings(tx, who, data)


ROUTES = [WebhookEndpointController, WebhookDeliveryController, WebhookSettingsController]

"""Thin routes of member activity and earning rules: parse, one service call, answer."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, get, patch, post, put
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.activity import recording, service
from loyalty.activity import schemas as s
from loyalty.activity.replay_routes import ReplayController
from loyalty.http.fast_routes import Arguments, FastRoute, Reply
from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ, STAFF_READ, WRITE

EVENT_SENDER_ROLES = ("ecommerce", "crm", "operator")
EVENT_SENDERS = allow(*EVENT_SENDER_ROLES)
OPERATOR = allow("operator")
TAGGERS = allow("crm", "operator")


async def _record(conn: AsyncConnection, who: Principal, args: Arguments) -> Reply:
    # Group commit (on by default): the event's write goes in the process's next batch.
    committer = getattr(args.state, "committer", None)
    replayed, result = await recording.record_event(conn, who, args.body, committer=committer)
    return Reply(replayed, msgspec.json.encode(result))


RECORD_EVENT = FastRoute(
    method="POST",
    path="/v1/events",
    summary="""Record a member event: facts, earning rules, tier and points, all or nothing.

    Idempotent by event_id: the same event again returns the first answer with
    Idempotent-Replayed: true; the same event_id with another body is a 409.""",
    roles=EVENT_SENDER_ROLES,
    result=s.EventResult,
    call=_record,
    body=s.EventIn,
    idempotent=False,
    connection="transaction",
    tags=("activity",),
)


class EventController(Controller):
    path = "/v1/events"
    tags = ["activity"]

    @post("/simulate", dependencies=WRITE, guards=[EVENT_SENDERS], status_code=200)
    async def simulate(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], data: JSONBody[s.EventIn]
    ) -> s.EventResult:
        """What this event would earn for this member; nothing is written."""
        return await service.simulate(tx, who, data)

    @post(
        "/import",
        dependencies=WRITE,
        guards=[OPERATOR],
        status_code=201,
        request_max_body_size=32 * 1024 * 1024,
    )
    async def import_events(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.ImportRequest],
    ) -> s.ImportResult:
        """Past events in bulk (at most 10,000); rebuilds facts. earn=false (default) earns nothing."""
        return await service.import_events(tx, who, data)


class MemberActivityController(Controller):
    path = "/v1/members/{member_id:str}"
    tags = ["activity"]

    @get("/facts", dependencies=READ, guards=[STAFF_READ])
    async def facts(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], member_id: FromPath[str]
    ) -> s.FactsView:
        return await service.member_facts(tx, who, member_id)

    @get("/events", dependencies=READ, guards=[STAFF_READ])
    async def events(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        member_id: FromPath[str],
        cursor: Annotated[str | None, QueryParameter(max_length=100)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    ) -> s.EventPage:
        return await service.member_events(tx, who, member_id, cursor=cursor, limit=limit)

    @put("/tags", dependencies=WRITE, guards=[TAGGERS])
    async def update_tags(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        member_id: FromPath[str],
        data: JSONBody[s.TagsUpdate],
    ) -> s.TagsView:
        """Add and remove tags (rules read them as the `tags` fact)."""
        return await service.update_tags(tx, who, member_id, data)


class ActivitySettingsController(Controller):
    path = "/v1/activity/settings"
    tags = ["activity"]
    guards = [OPERATOR]

    @get("/", dependencies=READ)
    async def get_settings(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.ActivitySettingsView:
        return await service.get_settings(tx, who)

    @put("/", dependencies=WRITE)
    async def put_settings(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.ActivitySettingsIn],
    ) -> s.ActivitySettingsView:
        """Replace the settings; every member's scores and stage are recomputed with them."""
        return await service.put_settings(tx, who, data)


class EarningRuleController(Controller):
    path = "/v1/earning-rules"
    tags = ["earning rules"]
    guards = [OPERATOR]

    @post("/", dependencies=WRITE, status_code=201)
    async def create(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.EarningRuleIn],
    ) -> s.EarningRuleView:
        return await service.create_rule(tx, who, data)

    @get("/", dependencies=READ)
    async def list_rules(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> list[s.EarningRuleView]:
        return await service.list_rules(tx, who)

    @get("/{code:str}", dependencies=READ)
    async def get_rule(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], code: FromPath[str]
    ) -> s.EarningRuleView:
        return await service.get_rule(tx, who, code)

    @patch("/{code:str}", dependencies=WRITE)
    async def update(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        code: FromPath[str],
        data: JSONBody[s.EarningRulePatch],
    ) -> s.EarningRuleView:
        """Change a rule; fields left out keep their value (a cap of 0 removes the cap)."""
        return await service.update_rule(tx, who, code, data)

    @post("/{code:str}/deactivate", dependencies=WRITE, status_code=200)
    async def deactivate(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], code: FromPath[str]
    ) -> s.EarningRuleView:
        return await service.deactivate_rule(tx, who, code)


ROUTES: list[Any] = [
    RECORD_EVENT.handler(),
    EventController,
    MemberActivityController,
    ActivitySettingsController,
    ReplayController,
    EarningRuleController,
]

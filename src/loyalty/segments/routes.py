"""Thin HTTP routes of segments: operators manage them, marketing reads them."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.http.lanes import allow
from loyalty.http.principal import Principal
from loyalty.http.routes import READ, WRITE
from loyalty.segments import schemas as s
from loyalty.segments import service

OPERATOR = allow("operator")
SEGMENT_READ = allow("operator", "marketing")


class SegmentController(Controller):
    path = "/v1/segments"
    tags = ["segments"]

    @post("/", dependencies=WRITE, guards=[OPERATOR], status_code=201)
    async def create(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        data: JSONBody[s.SegmentCreate],
    ) -> s.SegmentView:
        """A segment: a rule over member facts; an invalid rule is a 400 naming its path."""
        return await service.create(tx, who, data)

    @get("/", dependencies=READ, guards=[SEGMENT_READ])
    async def index(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal]
    ) -> s.SegmentList:
        return await service.list_all(tx, who)

    @get("/{code:str}", dependencies=READ, guards=[SEGMENT_READ])
    async def show(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], code: FromPath[str]
    ) -> s.SegmentView:
        return await service.get(tx, who, code)

    @patch("/{code:str}", dependencies=WRITE, guards=[OPERATOR])
    async def change(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        code: FromPath[str],
        data: JSONBody[s.SegmentUpdate],
    ) -> s.SegmentView:
        return await service.update(tx, who, code, data)

    @delete("/{code:str}", dependencies=WRITE, guards=[OPERATOR], status_code=204)
    async def remove(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], code: FromPath[str]
    ) -> None:
        await service.delete(tx, who, code)

    @get("/{code:str}/members", dependencies=READ, guards=[SEGMENT_READ])
    async def members(
        self,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        code: FromPath[str],
        cursor: Annotated[str | None, QueryParameter(max_length=400)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=10_000)] = 1000,
    ) -> s.SegmentMembers:
        """Member ids in the segment, in id order; pass next_cursor back for the next page."""
        return await service.members_page(tx, who, code, cursor, limit)

    @get(
        "/{code:str}/members/export",
        dependencies=READ,
        guards=[SEGMENT_READ],
        media_type="application/x-ndjson",
    )
    async def export(
        self,
        request: Request,
        tx: NamedDependency[AsyncConnection],
        who: NamedDependency[Principal],
        code: FromPath[str],
    ) -> Stream:
        """Every member of the segment, streamed as NDJSON lines ({"member_id": ...}) from one
        snapshot: for exports to a marketing tool, however large the segment."""
        rule = await service.segment_rule(tx, who, code)
        return Stream(
            service.export_members(request.app.state.engine, who, rule),
            media_type="application/x-ndjson",
        )

    @get("/{code:str}/count", dependencies=READ, guards=[SEGMENT_READ])
    async def count(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], code: FromPath[str]
    ) -> s.SegmentCount:
        return await service.count(tx, who, code)


class MemberSegmentsController(Controller):
    path = "/v1/members/{member_id:str}/segments"
    tags = ["segments"]

    @get("/", dependencies=READ, guards=[SEGMENT_READ])
    async def index(
        self, tx: NamedDependency[AsyncConnection], who: NamedDependency[Principal], member_id: FromPath[str]
    ) -> s.MemberSegments:
        return await service.member_segments(tx, who, member_id)


ROUTES = [SegmentController, MemberSegmentsController]

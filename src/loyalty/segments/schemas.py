"""Segments at the API edge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from loyalty.fields import Code, Strict

RuleJson = Annotated[Any, Meta(description="A rule of the rule language (see loyalty.rules).")]


class SegmentCreate(Strict, kw_only=True):
    code: Code
    name: Annotated[str, Meta(max_length=200)] = ""
    description: Annotated[str, Meta(max_length=2000)] = ""
    rule: RuleJson


class SegmentUpdate(Strict, kw_only=True):
    name: Annotated[str, Meta(max_length=200)] | None = None
    description: Annotated[str, Meta(max_length=2000)] | None = None
    rule: RuleJson | None = None


class SegmentView(msgspec.Struct, kw_only=True):
    code: str
    name: str
    description: str
    rule: Any
    created_at: datetime
    updated_at: datetime


class SegmentList(msgspec.Struct):
    items: list[SegmentView]


class SegmentMembers(msgspec.Struct):
    items: list[str]  # member external ids, in order
    next_cursor: str | None


class SegmentCount(msgspec.Struct):
    code: str
    count: int


class MemberSegments(msgspec.Struct):
    member_id: str
    segments: list[str]

"""Webhooks at the API edge."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from loyalty.fields import Strict

Url = Annotated[str, Meta(min_length=8, max_length=2000, description="Where events are POSTed (http/https).")]
EventTypes = Annotated[
    list[Annotated[str, Meta(min_length=1, max_length=64)]],
    Meta(min_length=1, max_length=32, description="Event types to receive, or ['*'] for all."),
]
Description = Annotated[str, Meta(max_length=500)]
DeliveryStatus = Literal["pending", "failed", "succeeded", "dead"]


class EndpointCreate(Strict, kw_only=True):
    url: Url
    event_types: EventTypes
    description: Description = ""


class EndpointUpdate(Strict, kw_only=True):
    url: Url | None = None
    event_types: EventTypes | None = None
    description: Description | None = None
    active: bool | None = None


class EndpointView(msgspec.Struct, kw_only=True):
    id: int
    url: str
    description: str
    event_types: list[str]
    active: bool
    created_at: datetime
    disabled_at: datetime | None


class EndpointWithSecret(EndpointView, kw_only=True):
    """Only the answer to create and rotate carries the signing secret."""

    secret: str


class EndpointList(msgspec.Struct):
    items: list[EndpointView]


class DeliveryView(msgspec.Struct, kw_only=True):
    id: int
    endpoint_id: int
    event_id: int
    event_type: str
    subject: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: datetime | None
    succeeded_at: datetime | None
    created_at: datetime


class DeliveryPage(msgspec.Struct):
    items: list[DeliveryView]
    next_cursor: str | None


class PingResult(msgspec.Struct, kw_only=True):
    webhook_id: str
    delivered: bool
    status_code: int | None
    error: str | None


class WebhookSettingsView(msgspec.Struct, kw_only=True):
    expiring_soon_days: int | None


class WebhookSettingsUpdate(Strict, kw_only=True):
    expiring_soon_days: (
        Annotated[
            int,
            Meta(ge=1, le=365, description="Send points.expiring_soon this many days before a lot expires."),
        ]
        | None
    ) = None


def view(row: dict[str, Any]) -> EndpointView:
    return EndpointView(**{k: v for k, v in row.items() if k != "secret"})

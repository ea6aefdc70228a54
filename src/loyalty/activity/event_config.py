"""What an event reads of its programme: the configuration (settings, earning rules, tier
ladders) cached per process and checked against the programme's config version, and the
checks of an event against it."""

from __future__ import annotations

import dataclasses
import weakref
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncConnection

from loyalty.activity import core, repository
from loyalty.activity import schemas as s
from loyalty.errors import InvalidInput
from loyalty.rules import Rule, parse_rule
from loyalty.tiers import repository as tier_repository
from loyalty.tiers.definition import LadderSpec, parse_definition


def now_utc() -> datetime:
    return datetime.now(UTC)


def check_event(req: s.EventIn, custom_types: list[str], now: datetime) -> datetime:
    """Type-specific checks the schema cannot state; returns the event time."""
    core.check_event_type(req.type, custom_types)
    occurred_at = core.check_occurred_at(req.occurred_at, now)
    if req.type == "order_completed":
        for field in ("order_ref", "amount", "currency"):
            if getattr(req, field) is None:
                raise InvalidInput(field, "is required for an order_completed event")
    elif req.type == "order_refunded":
        if req.order_ref is None:
            raise InvalidInput("order_ref", "is required for an order_refunded event")
        if req.amount is not None and req.amount == 0:
            raise InvalidInput("amount", "a refund must be above 0 (leave it out for a full refund)")
        if req.items:
            raise InvalidInput("items", "are not part of a refund event")
    else:
        for field in ("amount", "items", "order_ref", "currency"):
            if getattr(req, field) is not None:
                raise InvalidInput(field, f"is only for order events, not {req.type}")
    if req.data is not None and len(msgspec.json.encode(req.data)) > 8192:
        raise InvalidInput("data", "at most 8 KiB of JSON")
    return occurred_at


def local_day(moment: datetime, tz: str) -> date:
    return moment.astimezone(ZoneInfo(tz)).date()


@dataclasses.dataclass(slots=True)
class CachedRule:
    """An active earning rule as stored, its condition and formula parsed once per process."""

    row: dict[str, Any]
    _condition: Rule | None = None
    _formula: core.Formula | None = None

    def condition(self) -> Rule:
        if self._condition is None:
            self._condition = parse_rule(self.row["condition"], path="condition")
        return self._condition

    def formula(self) -> core.Formula:
        if self._formula is None:
            self._formula = core.parse_formula(self.row["formula"])
        return self._formula


@dataclasses.dataclass(slots=True)
class EventConfig:
    """What an event reads of its programme's configuration, as of ``version``."""

    version: int
    timezone: str
    settings: dict[str, Any]
    rules: dict[str, list[CachedRule]]  # active rules by event type, in priority order
    ladders: list[dict[str, Any]]  # versions published, latest effective_at first
    has_multipliers: bool  # an active multiplier benefit exists: members' multipliers are read
    _specs: dict[int, LadderSpec] = dataclasses.field(default_factory=dict)

    def ladder(self, now: datetime) -> LadderSpec | None:
        """The ladder in force at ``now`` (tiers.repository.current_version's choice)."""
        for row in self.ladders:
            if row["effective_at"] <= now:
                spec = self._specs.get(row["version"])
                if spec is None:
                    spec = self._specs[row["version"]] = parse_definition(
                        row["definition"], version=row["version"]
                    )
                return spec
        return None


# Per engine (one database) and programme; an event checks the version it reads anyway.
_CONFIGS: weakref.WeakKeyDictionary[Engine, dict[int, EventConfig]] = weakref.WeakKeyDictionary()


async def load_config(conn: AsyncConnection, programme_id: int) -> EventConfig:
    head = await repository.programme_config(conn, programme_id)
    by_type: dict[str, list[CachedRule]] = {}
    for row in await repository.rules(conn, programme_id):
        if row["active"]:
            by_type.setdefault(row["event_type"], []).append(CachedRule(row))
    config = EventConfig(
        version=head["config_version"],
        timezone=head["timezone"] or "UTC",
        settings=head["settings"],
        rules=by_type,
        ladders=await tier_repository.ladder_versions(conn, programme_id),
        has_multipliers=head["has_multipliers"],
    )
    _CONFIGS.setdefault(conn.engine.sync_engine, {})[programme_id] = config
    return config


def cached_config(conn: AsyncConnection, programme_id: int) -> EventConfig | None:
    return _CONFIGS.get(conn.engine.sync_engine, {}).get(programme_id)

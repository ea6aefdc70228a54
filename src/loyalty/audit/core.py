"""The audit trail's pure parts: who a row names, what its JSON may hold, filters and cursors.

No I/O here: loyalty.audit.service writes and reads the rows.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from loyalty.errors import InvalidInput
from loyalty.http.principal import Principal

# Every action the service writes, and what it means. The API's ?action= filter and the
# console's choices come from here; docs/audit.md lists them too.
ACTIONS: dict[str, str] = {
    "programme.create": "a programme was created (from the command line)",
    "programme.update": "programme settings changed (name, time zone, clawback policy, transfers)",
    "api_key.create": "an API key was created (its secret is never recorded)",
    "api_key.revoke": "an API key was revoked",
    "webhook_endpoint.create": "a webhook endpoint was registered",
    "webhook_endpoint.update": "a webhook endpoint's URL, event types, description or state changed",
    "webhook_endpoint.delete": "a webhook endpoint and its delivery log were removed",
    "webhook_endpoint.rotate_secret": "a webhook endpoint got a new signing secret",
    "webhook_delivery.redeliver": "a webhook delivery was queued again",
    "webhook_settings.update": "the programme's webhook settings changed",
    "activity_settings.update": "the activity settings (window, RFM, lifecycle, event types) changed",
    "events.import": "past member events were imported in bulk",
    "earning_rule.create": "an earning rule was created",
    "earning_rule.update": "an earning rule was changed",
    "earning_rule.deactivate": "an earning rule was deactivated",
    "segment.create": "a segment was created",
    "segment.update": "a segment was changed",
    "segment.delete": "a segment was deleted",
    "tier_ladder.draft": "a draft ladder version was created",
    "tier_ladder.update_draft": "a draft ladder version's tiers or note were edited",
    "tier_ladder.publish": "a ladder version was published",
    "tier_ladder.reassess": "a re-assessment of every member was queued",
    "member.create": "a member was enrolled",
    "member.update": "a member's attributes or status changed",
    "member.tags": "a member's tags changed",
    "member.adjust_points": "an operator credited or debited a member's points",
    "member.tier_assess": "an operator had a member's tier assessed",
    "member.tier_pin": "a member's tier was pinned",
    "member.tier_unpin": "a member's tier pin was removed",
    "member.benefit_grant": "a benefit was granted to a member",
    "member.benefit_revoke": "a member's benefit grant was revoked",
    "benefit.create": "a benefit was added to the catalogue",
    "benefit.update": "a benefit of the catalogue was changed",
    "tier_benefits.set": "the benefits a tier includes were replaced",
    "benefit_campaign.create": "a benefit campaign was created",
    "budget.create": "a budget was created",
    "budget.top_up": "a budget's cap was raised",
    "budget.move": "unissued points moved between budgets (one row per budget)",
    "budget.close": "a budget was closed; what it had not issued went back to funding",
    "hold.void": "an operator gave a hold's points back to the member",
    "import.create": "a CSV import of members or point grants was uploaded and queued (one row per upload)",
    "import.resume": "a failed or stalled import was queued again",
    "operator.create": "a console operator was created (the password is never recorded)",
    "operator.role": "an operator's role in the programme changed",
    "operator.remove": "an operator was removed from the programme",
    "operator.invite": "an operator was invited to the programme (the link's token is never recorded)",
    "operator.invite_cancel": "an open invitation was cancelled",
    "operator.invite_accept": "an invitation was accepted: the operator now works in the programme",
}

# Keys whose values never go into the trail, at any depth: secrets and their digests.
SECRET_KEYS = frozenset({"secret", "key_hash", "token", "password", "password_hash", "api_key"})
REDACTED = "[redacted]"

MAX_REASON = 2000
_ACTION = re.compile(r"^[a-z][a-z_]*(\.[a-z][a-z_]*)?(\.\*)?$")
_NAME = re.compile(r"^[a-z][a-z_]{0,62}$")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who a row names: the principal's actor string, and the key or operator behind it."""

    programme_id: int
    actor: str
    key_id: int | None
    operator_id: int | None


def actor_of(who: Principal | str, programme_id: int | None = None) -> Actor:
    """A request's principal, or a system actor by name ("cli", "system") for a programme.

    ``operator_id`` is read with getattr: console principals carry one, API keys do not."""
    if isinstance(who, str):
        if programme_id is None:
            raise ValueError("a system actor needs the programme_id")
        return Actor(programme_id=programme_id, actor=who, key_id=None, operator_id=None)
    operator_id = getattr(who, "operator_id", None)
    return Actor(
        programme_id=who.programme_id if programme_id is None else programme_id,
        actor=who.actor,
        key_id=who.key_id,
        operator_id=operator_id if isinstance(operator_id, int) else None,
    )


def redact(value: Any) -> Any:
    """Builtins (dicts, lists, scalars) with every secret-named key's value replaced."""
    if isinstance(value, dict):
        return {k: REDACTED if k in SECRET_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def snapshot(value: Any) -> Any:
    """A value as JSON builtins: Structs, dataclasses, datetimes (ISO 8601), sets, bytes..."""
    if value is None:
        return None
    return redact(msgspec.to_builtins(value, order="sorted"))


def to_json(value: Any) -> str | None:
    built = snapshot(value)
    return None if built is None else msgspec.json.encode(built).decode()


def changed(before: Any, after: Any) -> list[str]:
    """The top-level keys whose values differ between two snapshots (all keys of a creation or
    deletion); empty when either side is not an object."""
    if not isinstance(before, dict) and not isinstance(after, dict):
        return []
    old = before if isinstance(before, dict) else {}
    new = after if isinstance(after, dict) else {}
    return sorted(k for k in old.keys() | new.keys() if old.get(k, _MISSING) != new.get(k, _MISSING))


_MISSING = object()


def check_entry(action: str, entity: str, reason: str | None) -> None:
    """What record() refuses: a programming error, not a client's (so not InvalidInput)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}: add it to loyalty.audit.core.ACTIONS")
    if not _NAME.match(entity):
        raise ValueError(f"entity type {entity!r}: lowercase letters and '_'")
    if reason is not None and len(reason) > MAX_REASON:
        raise ValueError(f"reason longer than {MAX_REASON} characters")


# Reading -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Filter:
    """GET /v1/audit's filters. ``action`` may end in ".*" (every action of a subject)."""

    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None
    entity: str | None = None
    entity_id: str | None = None

    def check(self) -> Filter:
        for field, moment in (("since", self.since), ("until", self.until)):
            if moment is not None and moment.tzinfo is None:
                raise InvalidInput(field, "must carry a time zone offset, e.g. 2026-12-01T00:00:00Z")
        if self.since and self.until and self.until <= self.since:
            raise InvalidInput("until", "must be after since")
        if self.action is not None:
            if not _ACTION.match(self.action):
                raise InvalidInput("action", "an action such as member.adjust_points, or budget.*")
            if not self.action.endswith(".*") and self.action not in ACTIONS:
                raise InvalidInput("action", f"unknown action; one of {', '.join(sorted(ACTIONS))}")
        if self.entity is not None and not _NAME.match(self.entity):
            raise InvalidInput("entity", "an entity type such as member, budget or earning_rule")
        if self.entity_id is not None and self.entity is None:
            raise InvalidInput("entity_id", "needs entity (the type of the entity the id names)")
        return self

    @property
    def action_prefix(self) -> str | None:
        """'budget.' for 'budget.*'; None for an exact action or none."""
        if self.action is not None and self.action.endswith(".*"):
            return self.action[:-1]
        return None


FILTER_FIELDS = ("actor", "action", "entity", "entity_id", "since", "until")


def parse_filter(values: Mapping[str, str | None]) -> Filter:
    """A checked Filter from text fields (a console form, a query string): blank means no
    filter; since and until are ISO 8601 with an offset. A bad value is InvalidInput naming
    its field."""
    given = {k: (values.get(k) or "").strip() or None for k in FILTER_FIELDS}

    def moment(field: str) -> datetime | None:
        raw = given[field]
        try:
            return None if raw is None else datetime.fromisoformat(raw)
        except ValueError:
            raise InvalidInput(field, "an ISO 8601 time with an offset, e.g. 2026-12-01T00:00:00Z") from None

    return Filter(
        actor=given["actor"],
        action=given["action"],
        entity=given["entity"],
        entity_id=given["entity_id"],
        since=moment("since"),
        until=moment("until"),
    ).check()


def subjects() -> list[str]:
    """'budget.*', 'member.*', ...: the prefix filters, for a choice beside the single actions."""
    return sorted({f"{action.split('.')[0]}.*" for action in ACTIONS})


def encode_cursor(at: datetime, row_id: int) -> str:
    # Exact integer microseconds (total_seconds() is a float): PostgreSQL keeps microseconds.
    delta = at - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return base64.urlsafe_b64encode(f"a:{micros}:{row_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, micros, row_id = raw.split(":")
        if tag != "a" or not 0 < int(row_id) < 2**63:
            raise ValueError(tag)
        return _EPOCH + timedelta(microseconds=int(micros)), int(row_id)
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise InvalidInput("cursor", "is not a cursor this API returned") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

"""Pure webhook logic: event types, URL checks, retry schedule, the signed message.

No database, HTTP client or framework here; standardwebhooks only computes HMACs.
"""

from __future__ import annotations

import base64
import random
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import msgspec
from standardwebhooks import Webhook

EVENT_TYPES = frozenset(
    {
        "points.earned",
        "points.spent",
        "points.expiring_soon",
        "points.expired",
        "points.clawed_back",
        "points.adjusted",
        "tier.changed",
        "benefit.granted",
        "benefit.consumed",
        "budget.threshold_reached",
    }
)
ALL = "*"
PING = "webhook.ping"

# Seconds to wait after the n-th failed attempt (1-based); after the last, the delivery is dead.
BACKOFF_SECONDS = (10, 30, 120, 600, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600)
MAX_ATTEMPTS = len(BACKOFF_SECONDS) + 1
JITTER = 0.2


def check_url(url: str) -> str | None:
    """Why this URL cannot be a webhook endpoint, or None if it can."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "must name a host"
    if parts.username or parts.password:
        return "must not carry credentials; the signature authenticates the sender"
    return None


def check_event_types(types: list[str]) -> str | None:
    """Why this subscription is not valid, or None."""
    if not types:
        return "must name at least one event type, or '*'"
    unknown = sorted(set(types) - EVENT_TYPES - {ALL})
    if unknown:
        return f"unknown event types {unknown}; known: {sorted(EVENT_TYPES)} or '*'"
    return None


def normalise_event_types(types: list[str]) -> list[str]:
    return [ALL] if ALL in types else sorted(set(types))


def new_secret() -> str:
    """A Standard Webhooks secret: 'whsec_' and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def retry_delay(attempts: int, rng: random.Random | None = None) -> timedelta | None:
    """The wait before the next attempt after `attempts` failed ones; None = give up (dead)."""
    if attempts >= MAX_ATTEMPTS:
        return None
    base = BACKOFF_SECONDS[min(attempts, len(BACKOFF_SECONDS)) - 1]
    spread = (rng or random).uniform(-JITTER, JITTER)
    return timedelta(seconds=base * (1 + spread))


def message_id(programme_id: int, event_id: int) -> str:
    """Stable per event: a redelivery carries the same id, so receivers can dedupe."""
    return f"evt_{programme_id}_{event_id}"


@dataclass(frozen=True, kw_only=True)
class Message:
    id: str
    body: bytes
    headers: dict[str, str]


def sign(
    *, secret: str, msg_id: str, event_type: str, occurred_at: datetime, data: Any, now: datetime
) -> Message:
    body = msgspec.json.encode({"type": event_type, "timestamp": occurred_at, "data": data})
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=now, data=body.decode())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    return Message(id=msg_id, body=body, headers=headers)


def succeeded(status_code: int) -> bool:
    return 200 <= status_code < 300

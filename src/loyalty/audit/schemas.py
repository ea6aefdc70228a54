"""The API edge of the audit trail."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class AuditEntry(msgspec.Struct, kw_only=True):
    id: int
    at: datetime
    # "key:{id}:{role}" for an API key, "operator:{id}" for a console operator, or a system
    # actor such as "cli".
    actor: str
    key_id: int | None
    operator_id: int | None
    action: str
    entity_type: str
    entity_id: str | None
    before: Any
    after: Any
    # The top-level fields that differ between before and after.
    changed: list[str]
    reason: str | None
    request_id: str | None


class AuditPage(msgspec.Struct, kw_only=True):
    items: list[AuditEntry]
    next_cursor: str | None

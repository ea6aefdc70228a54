"""Who is calling: the principal every route, service and audit record is given."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Role = Literal["operator", "ecommerce", "crm", "marketing", "member"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API key of one programme and role, or a member's token."""

    programme_id: int
    programme_code: str
    role: Role
    key_id: int | None = None
    member_external_id: str | None = None
    timezone: str = "UTC"
    # Set when an operator acts through the console (roles of the console: console/core.py).
    operator_id: int | None = None

    @property
    def actor(self) -> str:
        if self.operator_id is not None:
            return f"operator:{self.operator_id}"
        if self.member_external_id is not None:
            return f"member:{self.member_external_id}"
        return f"key:{self.key_id}:{self.role}"

"""Ledger errors, decoded from the posting engine's ``LY000`` failures."""

from __future__ import annotations

import json
from typing import Any

from loyalty.errors import Conflict, DomainError, NotFound, Unprocessable

# Each code the SQL functions raise, with the error class and a sentence for people.
_CODES: dict[str, tuple[type[DomainError], str]] = {
    "member_not_found": (NotFound, "No member with this id in the programme."),
    "budget_not_found": (NotFound, "No budget with this code in the programme."),
    "hold_not_found": (NotFound, "No hold with this id in the programme."),
    "reference_not_found": (NotFound, "The member has no earn with this reference."),
    "budget_exists": (Conflict, "A budget with this code already exists."),
    "idempotency_key_reused": (
        Conflict,
        "This Idempotency-Key was already used with a different request.",
    ),
    "hold_not_open": (Conflict, "The hold is no longer open."),
    "member_not_active": (Unprocessable, "The member is suspended or closed."),
    "budget_closed": (Unprocessable, "The budget is closed."),
    "budget_not_active": (Unprocessable, "The budget is outside its active period."),
    "budget_exhausted": (Unprocessable, "The budget has not enough points left."),
    "member_cap_reached": (Unprocessable, "The budget's per-member cap would be exceeded."),
    "insufficient_points": (Unprocessable, "The member has not enough available points."),
    "capture_exceeds_hold": (Unprocessable, "The capture is larger than the hold."),
    "clawback_exceeds_earned": (
        Unprocessable,
        "More is asked back than the reference earned and still holds.",
    ),
    "transfers_disabled": (Unprocessable, "The programme does not allow transfers between members."),
    "same_member": (Unprocessable, "A transfer needs two different members."),
    "same_budget": (Unprocessable, "A move needs two different budgets."),
    "batch_rejected": (Unprocessable, "Some items cannot be earned; nothing was written (all_or_nothing)."),
    "ledger_inconsistent": (DomainError, "The ledger found an inconsistency and refused the write."),
}


def ledger_error(code: str, detail_json: str | None) -> DomainError:
    extra: dict[str, Any] = json.loads(detail_json) if detail_json else {}
    cls, sentence = _CODES.get(code, (DomainError, code))
    return cls(sentence, code=code, extra=extra)

"""The audit trail: who changed what, when, from what to what, and why.

``record(conn, who, action=..., entity=..., entity_id=..., before=..., after=..., reason=...)``
writes one row in the caller's transaction; see service.py and docs/audit.md.
"""

from loyalty.audit.core import ACTIONS
from loyalty.audit.service import decoded, reason, record, same_transaction

__all__ = ["ACTIONS", "decoded", "reason", "record", "same_transaction"]

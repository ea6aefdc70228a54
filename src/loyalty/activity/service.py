"""Member activity use cases, by what they do. Never commits: the caller's transaction
(web.provide_tx, or a worker task) owns it.

- recording: record an event (facts, earning rules, tier, ledger), simulate one;
- refunds: a refund's proportional clawback;
- imports: history in bulk;
- member_activity: a member's facts, events and tags;
- activity_settings: facts window, RFM and lifecycle settings, the facts refresh;
- earning_rules: earning rule administration.
"""

from __future__ import annotations

from loyalty.activity.activity_settings import get_settings, put_settings, refresh_programme
from loyalty.activity.earning_rules import (
    create_rule,
    deactivate_rule,
    get_rule,
    list_rules,
    update_rule,
)
from loyalty.activity.imports import import_events
from loyalty.activity.member_activity import member_events, member_facts, update_tags
from loyalty.activity.recording import record, simulate

__all__ = [
    "create_rule",
    "deactivate_rule",
    "get_rule",
    "get_settings",
    "import_events",
    "list_rules",
    "member_events",
    "member_facts",
    "put_settings",
    "record",
    "refresh_programme",
    "simulate",
    "update_rule",
    "update_tags",
]

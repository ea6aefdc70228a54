"""The rule language of segments, tier rules and earning conditions (see rules/core.py)."""

from __future__ import annotations

from loyalty.rules.core import (
    ALWAYS,
    MAX_DEPTH,
    MAX_LIST,
    MAX_NODES,
    AllOf,
    AnyOf,
    Condition,
    ConditionExplanation,
    Explanation,
    GroupExplanation,
    Not,
    Rule,
    RuleError,
    evaluate,
    explain,
    facts_used,
    parse_rule,
    to_json,
)
from loyalty.rules.facts import CATALOGUE, LIFECYCLES, Facts, FactSpec, Kind, Op, days_since, lookup
from loyalty.rules.sql import FactColumns, MissingFactColumn, days_since_sql, to_sql

__all__ = [
    "ALWAYS",
    "CATALOGUE",
    "LIFECYCLES",
    "MAX_DEPTH",
    "MAX_LIST",
    "MAX_NODES",
    "AllOf",
    "AnyOf",
    "Condition",
    "ConditionExplanation",
    "Explanation",
    "FactColumns",
    "FactSpec",
    "Facts",
    "GroupExplanation",
    "Kind",
    "MissingFactColumn",
    "Not",
    "Op",
    "Rule",
    "RuleError",
    "days_since",
    "days_since_sql",
    "evaluate",
    "explain",
    "facts_used",
    "lookup",
    "parse_rule",
    "to_json",
    "to_sql",
]

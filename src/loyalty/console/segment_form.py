"""The segment builder's form: a rule as rows of conditions (fact, operator, value), met when
all or any of them hold, or a whole rule in JSON for what rows cannot say (nesting). Pure.

Fields: ``match``, ``c<i>.fact``, ``c<i>.key`` (an attribute's key), ``c<i>.op``,
``c<i>.value`` (lists and ``between`` bounds comma-separated), and ``rule_json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from loyalty import rules
from loyalty.console.ladder_form import FormInvalid
from loyalty.rules.facts import LIST_OPS, OPS, PRESENCE_OPS

ATTRIBUTE = "attribute"
FACTS: list[tuple[str, str]] = [
    *((name, f"{name} — {spec.description}") for name, spec in rules.CATALOGUE.items()),
    (ATTRIBUTE, "attribute — a CRM attribute (give its key)"),
]
OP_LABELS = {
    "==": "is",
    "!=": "is not",
    ">": "more than",
    ">=": "at least",
    "<": "less than",
    "<=": "at most",
    "between": "between (low, high)",
    "in": "one of (a, b, …)",
    "not_in": "none of (a, b, …)",
    "contains": "has the tag",
    "contains_any": "has any tag of (a, b, …)",
    "contains_all": "has every tag of (a, b, …)",
    "is_set": "is set",
    "is_not_set": "is not set",
}
OPERATORS = [(op, OP_LABELS[op]) for op in OPS]
_ROW = re.compile(r"^c(\d+)\.(fact|key|op|value)$")
_RULE_PATH = re.compile(r"^rule\.(?:all|any)\[(\d+)\](?:\.(\w+))?")
MIN_ROWS = 4


def _value_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_value_text(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def rows_of(rule_json: Any) -> tuple[str, list[dict[str, str]], str]:
    """(match, rows, rule_json) for a stored rule: rows when it is a flat list of conditions,
    else the whole rule as JSON."""
    rule = rules.parse_rule(rule_json)
    children: tuple[rules.Rule, ...]
    match = "all"
    if isinstance(rule, rules.Condition):
        children = (rule,)
    elif isinstance(rule, rules.AllOf | rules.AnyOf) and all(
        isinstance(c, rules.Condition) for c in rule.rules
    ):
        children = rule.rules
        match = "all" if isinstance(rule, rules.AllOf) else "any"
    else:
        return "all", blank_rows(0), json.dumps(rules.to_json(rule))
    rows = []
    for child in children:
        assert isinstance(child, rules.Condition)
        attribute = child.fact.startswith("attributes.")
        rows.append(
            {
                "fact": ATTRIBUTE if attribute else child.fact,
                "key": child.fact.removeprefix("attributes.") if attribute else "",
                "op": child.op,
                "value": _value_text(child.value),
            }
        )
    return match, [*rows, *blank_rows(len(rows))], ""


def blank_rows(filled: int) -> list[dict[str, str]]:
    return [{"fact": "", "key": "", "op": ">=", "value": ""} for _ in range(max(MIN_ROWS - filled, 1))]


def posted_rows(values: Mapping[str, str]) -> list[dict[str, str]]:
    rows: dict[int, dict[str, str]] = {}
    for key, value in values.items():
        found = _ROW.match(key)
        if found:
            rows.setdefault(int(found.group(1)), {})[found.group(2)] = value
    return [rows[i] for i in sorted(rows)]


def _literal(text: str, fact: str) -> Any:
    """A value as typed: integers for integer facts, strings for the rest; for an attribute,
    true/false and whole numbers are taken as such, anything else (or "quoted") as text."""
    text = text.strip()
    spec = rules.lookup(fact)
    if spec is not None and spec.kind is rules.Kind.INTEGER:
        try:
            return int(text)
        except ValueError:
            raise ValueError("must be a whole number") from None
    if spec is not None and spec.kind is rules.Kind.ATTRIBUTE:
        if len(text) >= 2 and text[0] == text[-1] == '"':
            return text[1:-1]
        if text in ("true", "false"):
            return text == "true"
        if re.fullmatch(r"-?\d+", text):
            return int(text)
    return text


def rule_of(values: Mapping[str, str]) -> Any:
    """The rule the form describes, validated (raises FormInvalid naming the form's fields)."""
    raw_json = values.get("rule_json", "").strip()
    if raw_json:
        try:
            data = json.loads(raw_json)
        except json.JSONDecodeError as exc:
            raise FormInvalid(
                [("rule_json", f"is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})")]
            ) from None
        try:
            return rules.to_json(rules.parse_rule(data))
        except rules.RuleError as exc:
            raise FormInvalid([("rule_json", "; ".join(f"{p}: {r}" for p, r in exc.errors))]) from None
    match = values.get("match", "all")
    if match not in ("all", "any"):
        raise FormInvalid([("match", "must be all or any")])
    errors: list[tuple[str, str]] = []
    conditions: list[dict[str, Any]] = []
    origin: list[int] = []
    rows: dict[int, dict[str, str]] = {}
    for key, value in values.items():
        found = _ROW.match(key)
        if found:
            rows.setdefault(int(found.group(1)), {})[found.group(2)] = value
    for i in sorted(rows):
        row = rows[i]
        fact = row.get("fact", "").strip()
        if not fact:
            continue
        if fact == ATTRIBUTE:
            key = row.get("key", "").strip()
            if not key:
                errors.append((f"c{i}.key", "is required for an attribute"))
                continue
            fact = f"attributes.{key}"
        op = row.get("op", "")
        condition: dict[str, Any] = {"fact": fact, "op": op}
        if op not in PRESENCE_OPS:
            text = row.get("value", "").strip()
            if not text:
                errors.append((f"c{i}.value", f"is required for {OP_LABELS.get(op, op)!r}"))
                continue
            try:
                if op == "between" or op in LIST_OPS:
                    condition["value"] = [_literal(part, fact) for part in text.split(",")]
                else:
                    condition["value"] = _literal(text, fact)
            except ValueError as exc:
                errors.append((f"c{i}.value", str(exc)))
                continue
        conditions.append(condition)
        origin.append(i)
    if errors:
        raise FormInvalid(errors)
    if not conditions:
        raise FormInvalid([("_form", "Add at least one condition (or a rule in JSON).")])
    try:
        return rules.to_json(rules.parse_rule({match: conditions}))
    except rules.RuleError as exc:
        placed: list[tuple[str, str]] = []
        for path, reason in exc.errors:
            found = _RULE_PATH.match(path)
            if found:
                part = found.group(2) or "value"
                part = (
                    "key"
                    if part == "fact" and conditions[int(found.group(1))]["fact"].startswith("attributes.")
                    else part
                )
                placed.append((f"c{origin[int(found.group(1))]}.{part}", reason))
            else:
                placed.append(("_form", f"{path}: {reason}"))
        raise FormInvalid(placed) from None

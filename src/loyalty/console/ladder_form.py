"""The tier ladder editor's form: a ladder definition as rows of fields, and back. Pure.

Each tier is a row of fields named ``tiers[i].<field>``. Entry and retention rules are shown
as thresholds on qualifying points, spend and orders (met when all, or any, of them are
reached) plus, for anything else the rule language says (segment-style conditions on RFM,
lifecycle, tags, attributes ...), a rule in JSON that must hold as well. A stored rule that
is not of that shape is shown whole in the JSON field, so the editor never loses a rule.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from loyalty import rules
from loyalty.errors import InvalidInput

THRESHOLDS: tuple[tuple[str, str], ...] = (
    ("qualifying_points", "points"),
    ("spend", "spend"),
    ("orders", "orders"),
)
_BY_FACT = dict(THRESHOLDS)
ROW_FIELDS = (
    "code", "name", "rank", "match", "points", "spend", "orders", "rule",
    "keep_points", "keep_spend", "keep_orders", "keep_rule",
    "months", "round_to", "downgrade_policy", "grace_days", "bonus_budget", "bonus_points", "remove",
)  # fmt: skip
_ROW_KEY = re.compile(r"^tiers\[(\d+)\]\.(\w+)$")


class FormInvalid(InvalidInput):
    """Several fields of one form are wrong; ``extra["errors"]`` lists each (console.web.errors_of)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__(*errors[0])
        self.extra["errors"] = [{"field": f, "reason": r} for f, r in errors]


@dataclass
class RuleFields:
    match: str = "all"
    thresholds: dict[str, str] = field(default_factory=dict)  # form field -> value
    extra: str = ""  # JSON of what the thresholds do not say


def _threshold(rule: rules.Rule) -> tuple[str, int] | None:
    if (
        isinstance(rule, rules.Condition)
        and rule.op == ">="
        and rule.fact in _BY_FACT
        and isinstance(rule.value, int)
        and not isinstance(rule.value, bool)
    ):
        return _BY_FACT[rule.fact], rule.value
    return None


def _thresholds(children: tuple[rules.Rule, ...]) -> dict[str, str] | None:
    found: dict[str, str] = {}
    for child in children:
        pair = _threshold(child)
        if pair is None or pair[0] in found:
            return None
        found[pair[0]] = str(pair[1])
    return found


def split_rule(data: Any) -> RuleFields:
    """A stored rule as the editor shows it: thresholds, and JSON for the rest."""
    rule = rules.parse_rule(data)
    if isinstance(rule, rules.AllOf) and not rule.rules:
        return RuleFields()
    pair = _threshold(rule)
    if pair is not None:
        return RuleFields(thresholds={pair[0]: str(pair[1])})
    if isinstance(rule, rules.AllOf | rules.AnyOf):
        match = "all" if isinstance(rule, rules.AllOf) else "any"
        whole = _thresholds(rule.rules)
        if whole is not None:
            return RuleFields(match=match, thresholds=whole)
        if isinstance(rule, rules.AllOf):
            # all(thresholds..., others...) or all(any(thresholds...), others...)
            first = rule.rules[0]
            if isinstance(first, rules.AnyOf) and first.rules and _thresholds(first.rules) is not None:
                rest = rule.rules[1:]
                return RuleFields(
                    match="any", thresholds=_thresholds(first.rules) or {}, extra=_json_of(rest)
                )
            plain = [c for c in rule.rules if _threshold(c) is not None]
            others = tuple(c for c in rule.rules if _threshold(c) is None)
            found = _thresholds(tuple(plain))
            if plain and found is not None:
                return RuleFields(match="all", thresholds=found, extra=_json_of(others))
    return RuleFields(extra=json.dumps(rules.to_json(rule)))


def _json_of(children: tuple[rules.Rule, ...]) -> str:
    if not children:
        return ""
    if len(children) == 1:
        return json.dumps(rules.to_json(children[0]))
    return json.dumps({"all": [rules.to_json(c) for c in children]})


def rows_of(definition: Mapping[str, Any]) -> list[dict[str, str]]:
    """The editor's rows for a stored ladder definition (rank order)."""
    rows: list[dict[str, str]] = []
    for raw in sorted(definition.get("tiers", []), key=lambda t: t.get("rank", 0)):
        entry = split_rule(raw.get("entry", True))
        retention_raw = raw.get("retention")
        same = retention_raw is None or rules.parse_rule(retention_raw) == rules.parse_rule(
            raw.get("entry", True)
        )
        keep = RuleFields() if same else split_rule(retention_raw)
        validity = raw.get("validity") or {}
        bonus = raw.get("bonus") or {}
        row = {
            "code": raw.get("code", ""),
            "name": raw.get("name", ""),
            "rank": str(raw.get("rank", "")),
            "match": entry.match,
            "rule": entry.extra,
            "keep_rule": keep.extra,
            "months": "" if validity.get("months") is None else str(validity["months"]),
            "round_to": validity.get("round_to", "none"),
            "downgrade_policy": raw.get("downgrade_policy", "one_step"),
            "grace_days": str(raw.get("grace_days", 0)),
            "bonus_budget": bonus.get("budget", ""),
            "bonus_points": str(bonus.get("points", "")) if bonus else "",
        }
        for _, name in THRESHOLDS:
            row[name] = entry.thresholds.get(name, "")
            row[f"keep_{name}"] = keep.thresholds.get(name, "")
        rows.append(row)
    return rows


def blank_row(rank: int) -> dict[str, str]:
    return {
        "rank": str(rank),
        "match": "all",
        "round_to": "none",
        "downgrade_policy": "one_step",
        "grace_days": "0",
    }


def form_rows(values: Mapping[str, str]) -> list[dict[str, str]]:
    """The rows as posted, in form order (to show the form again as it was sent)."""
    rows = _indexed(values)
    return [rows[i] for i in sorted(rows)]


def _integer(text: str, name: str, errors: list[tuple[str, str]], *, minimum: int = 0) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        number = int(text)
    except ValueError:
        errors.append((name, "must be a whole number"))
        return None
    if number < minimum:
        errors.append((name, f"must be at least {minimum}"))
        return None
    return number


def _extra_rule(text: str, name: str, errors: list[tuple[str, str]]) -> Any | None:
    text = text.strip()
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        errors.append((name, f"is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"))
        return None
    try:
        return rules.to_json(rules.parse_rule(data, path="rule"))
    except rules.RuleError as exc:
        # One message on the JSON field, each problem with its place in the rule.
        errors.append((name, "; ".join(f"{path}: {reason}" for path, reason in exc.errors)))
        return None


def _rule(row: Mapping[str, str], i: int, prefix: str, match: str, errors: list[tuple[str, str]]) -> Any:
    conditions: list[Any] = []
    for fact, name in THRESHOLDS:
        value = _integer(row.get(f"{prefix}{name}", ""), f"tiers[{i}].{prefix}{name}", errors)
        if value is not None:
            conditions.append({"fact": fact, "op": ">=", "value": value})
    extra = _extra_rule(row.get(f"{prefix}rule", ""), f"tiers[{i}].{prefix}rule", errors)
    group: Any
    if not conditions:
        group = None
    elif len(conditions) == 1:
        group = conditions[0]
    else:
        group = {match: conditions}
    if group is None and extra is None:
        return None
    if group is None:
        return extra
    if extra is None:
        return group
    return (
        {"all": [*conditions, extra]} if match == "all" or len(conditions) == 1 else {"all": [group, extra]}
    )


def ladder_of(values: Mapping[str, str]) -> tuple[dict[str, Any], list[int]]:
    """The posted form as a LadderCreate body, and for each of its tiers the form row it came
    from (to put the domain's errors back on the right row). Raises FormInvalid."""
    errors: list[tuple[str, str]] = []
    tiers: list[dict[str, Any]] = []
    origin: list[int] = []
    for i, row in sorted(_indexed(values).items()):
        if row.get("remove") or not any(
            row.get(k, "").strip() for k in ("code", "name", "points", "spend", "orders", "rule")
        ):
            continue
        match = row.get("match", "all")
        if match not in ("all", "any"):
            errors.append((f"tiers[{i}].match", "must be all or any"))
            match = "all"
        tier: dict[str, Any] = {"code": row.get("code", "").strip(), "name": row.get("name", "").strip()}
        rank = _integer(row.get("rank", ""), f"tiers[{i}].rank", errors)
        if rank is None and not row.get("rank", "").strip():
            errors.append((f"tiers[{i}].rank", "is required"))
        tier["rank"] = rank if rank is not None else 0
        entry = _rule(row, i, "", match, errors)
        if entry is not None:
            tier["entry"] = entry
        keep = _rule(row, i, "keep_", match, errors)
        if keep is not None:
            tier["retention"] = keep
        months = _integer(row.get("months", ""), f"tiers[{i}].months", errors, minimum=1)
        tier["validity"] = {"months": months, "round_to": row.get("round_to") or "none"}
        tier["downgrade_policy"] = row.get("downgrade_policy") or "one_step"
        grace = _integer(row.get("grace_days", ""), f"tiers[{i}].grace_days", errors)
        tier["grace_days"] = grace or 0
        budget = row.get("bonus_budget", "").strip()
        points = _integer(row.get("bonus_points", ""), f"tiers[{i}].bonus_points", errors, minimum=1)
        if budget and points is not None:
            tier["bonus"] = {"budget": budget, "points": points}
        elif budget:
            errors.append((f"tiers[{i}].bonus_points", "is required with a bonus budget"))
        elif points is not None:
            errors.append((f"tiers[{i}].bonus_budget", "is required with bonus points"))
        tiers.append(tier)
        origin.append(i)
    if not tiers and not errors:
        errors.append(("_form", "A ladder needs at least its base tier."))
    if errors:
        raise FormInvalid(errors)
    return {"tiers": tiers, "note": values.get("note", "").strip()}, origin


def _indexed(values: Mapping[str, str]) -> dict[int, dict[str, str]]:
    rows: dict[int, dict[str, str]] = {}
    for key, value in values.items():
        found = _ROW_KEY.match(key)
        if found and found.group(2) in ROW_FIELDS:
            rows.setdefault(int(found.group(1)), {})[found.group(2)] = value
    return rows


_SUBFIELD = {
    "validity.months": "months",
    "validity.round_to": "round_to",
    "validity": "months",
    "bonus.budget": "bonus_budget",
    "bonus.points": "bonus_points",
    "bonus": "bonus_budget",
}
_DOMAIN_KEY = re.compile(r"^tiers\[([^\]]+)\](?:\.(.+))?$")


def place_errors(errors: Mapping[str, str], body: Mapping[str, Any], origin: list[int]) -> dict[str, str]:
    """The domain's errors on the ladder (``tiers[1].rank``, ``tiers[gold].grace_days``,
    ``tiers``) as the form's fields; what names no field of a row goes to the form's top."""
    placed: dict[str, str] = {}
    codes = {t.get("code"): k for k, t in enumerate(body.get("tiers", []))}
    general: list[str] = []
    for key, reason in errors.items():
        found = _DOMAIN_KEY.match(key)
        target = None
        if found:
            ref, sub = found.group(1), found.group(2) or ""
            k = int(ref) if ref.isdigit() else codes.get(ref)
            if k is not None and k < len(origin):
                name = _SUBFIELD.get(sub, sub.split(".")[0])
                if name in ("entry", "retention"):
                    name = "rule" if name == "entry" else "keep_rule"
                if name in ROW_FIELDS:
                    target = f"tiers[{origin[k]}].{name}"
        if target is None:
            general.append(reason if key in ("_form", "tiers") else f"{key}: {reason}")
        else:
            placed[target] = reason
    if general:
        placed["_form"] = " ".join(general)
    return placed

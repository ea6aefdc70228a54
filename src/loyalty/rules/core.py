"""The rule language of segments, tier rules and earning conditions: pure, no SQLAlchemy.

A rule is JSON data, validated by ``parse_rule`` into a small immutable tree, never eval'd:

    {"all": [rule, ...]}    true when every child is (all of [] is true)
    {"any": [rule, ...]}    true when some child is (any of [] is false)
    {"not": rule}           plain negation of the child's result
    {"fact": "spend", "op": ">=", "value": 10000}
    true                    shorthand for {"all": []}; false likewise for {"any": []}

The same tree compiles to SQL (rules/sql.py) and is evaluated here for one member; the two
agree exactly, which tests/integration/test_rules_sql.py checks against PostgreSQL.

Semantics, chosen so that SQL can follow them without three-valued logic:
- A comparison on a null or missing fact is false, ``!=`` and ``not_in`` included; only
  ``is_set``/``is_not_set`` see nulls. ``not`` then negates a plain boolean: {"not": {"fact":
  "recency_days", "op": "<", "value": 30}} holds for a member who never ordered.
- ``tags`` is a set, never null: ``is_set`` means "has at least one tag".
- ``attributes.<key>`` holds any JSON value. A comparison holds only when the key is present
  and its JSON type matches the literal's: an integer literal matches any JSON number
  (3.5 included, compared exactly as a decimal), a string a string, a boolean a boolean.
  Ordering operators take integers only; a list literal holds one type. ``is_set`` means the
  key is present with a non-null value.
- Literals: integers are 64-bit and never booleans; strings are at most 256 characters,
  without NUL, and non-empty except for attributes; lists are non-empty and at most 100 long. Limits (depth, nodes, list length) are validation errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Literal, TypeAlias, cast

from loyalty.errors import InvalidInput
from loyalty.rules.facts import (
    ATTRIBUTE_KEY,
    ATTRIBUTE_PREFIX,
    CATALOGUE,
    LIST_OPS,
    OPS,
    OPS_BY_KIND,
    ORDERING_OPS,
    PRESENCE_OPS,
    Facts,
    Kind,
    Op,
    attribute_key,
    lookup,
)

MAX_DEPTH: Final = 16
MAX_NODES: Final = 256
MAX_LIST: Final = 100
MAX_STRING: Final = 256
MIN_INT: Final = -(2**63)
MAX_INT: Final = 2**63 - 1

Scalar: TypeAlias = int | str | bool
Value: TypeAlias = Scalar | tuple[Scalar, ...] | None


@dataclass(frozen=True, slots=True)
class AllOf:
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class AnyOf:
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Not:
    rule: Rule


@dataclass(frozen=True, slots=True, eq=False)
class Condition:
    """``value`` is None for is_set/is_not_set, a tuple for list operators and between."""

    fact: str
    op: Op
    value: Value = None

    def _key(self) -> tuple[str, str, object]:
        # True == 1 in Python, but a boolean and an integer literal select different members.
        if isinstance(self.value, tuple):
            typed: object = tuple((type(item), item) for item in self.value)
        else:
            typed = (type(self.value), self.value)
        return (self.fact, self.op, typed)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Condition):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


Rule: TypeAlias = AllOf | AnyOf | Not | Condition
ALWAYS: Final[Rule] = AllOf(())


class RuleError(InvalidInput):
    """A rule failed validation. ``errors`` lists every (path, reason); ``path``/``reason`` are the first."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        if not errors:
            raise ValueError("a RuleError needs at least one error")
        path, reason = errors[0]
        super().__init__(path, reason)
        self.path = path
        self.errors = list(errors)
        self.extra["errors"] = [{"field": p, "reason": r} for p, r in self.errors]


# --- parsing ----------------------------------------------------------------------------------


def parse_rule(data: Any, *, path: str = "rule") -> Rule:
    """Validate JSON data into a Rule; raise RuleError listing every problem found.

    ``path`` names the rule's place in the request, so errors read like ``rule.all[2].value``.
    """
    parser = _Parser()
    rule = parser.rule(data, path, 1)
    if parser.errors or rule is None:
        raise RuleError(parser.errors or [(path, "is not a valid rule")])
    return rule


class _Parser:
    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.nodes = 0

    def error(self, path: str, reason: str) -> None:
        self.errors.append((path, reason))

    def rule(self, data: Any, path: str, depth: int) -> Rule | None:
        if depth > MAX_DEPTH:
            self.error(path, f"nests deeper than {MAX_DEPTH} levels")
            return None
        self.nodes += 1
        if self.nodes == MAX_NODES + 1:
            # Reported once, at the node that crossed the limit; the rest is not read.
            self.error(path, f"the rule has more than {MAX_NODES} nodes")
        if self.nodes > MAX_NODES:
            return None
        if data is True:
            return AllOf(())
        if data is False:
            return AnyOf(())
        if not isinstance(data, dict):
            self.error(path, "must be an object (all, any, not or a condition) or true")
            return None
        groups = [key for key in ("all", "any", "not") if key in data]
        if groups:
            if len(data) != 1:
                others = ", ".join(sorted(str(key) for key in data if key != groups[0]))
                self.error(path, f"a {groups[0]!r} node takes no other keys, found: {others}")
                return None
            key = groups[0]
            if key == "not":
                child = self.rule(data["not"], f"{path}.not", depth + 1)
                return None if child is None else Not(child)
            return self.group(key, data[key], f"{path}.{key}", depth)
        return self.condition(data, path)

    def group(self, key: str, items: Any, path: str, depth: int) -> Rule | None:
        if not isinstance(items, list):
            self.error(path, "must be a list of rules")
            return None
        if len(items) > MAX_LIST:
            self.error(path, f"must hold at most {MAX_LIST} rules")
            return None
        children = [self.rule(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(items)]
        if any(child is None for child in children):
            return None
        rules = tuple(cast("list[Rule]", children))
        return AllOf(rules) if key == "all" else AnyOf(rules)

    def condition(self, data: dict[Any, Any], path: str) -> Condition | None:
        ok = True
        for key in data:
            if key not in ("fact", "op", "value"):
                self.error(f"{path}.{key}", "is not a key of a condition (fact, op, value) or of all/any/not")
                ok = False

        fact = data.get("fact")
        spec = None
        if "fact" not in data:
            self.error(f"{path}.fact", "is required")
        elif not isinstance(fact, str):
            self.error(f"{path}.fact", "must be a string")
        else:
            spec = lookup(fact)
            if spec is None and fact.startswith(ATTRIBUTE_PREFIX):
                self.error(
                    f"{path}.fact",
                    f"attribute keys match {ATTRIBUTE_KEY.pattern}, not {attribute_key(fact)!r}",
                )
            elif spec is None:
                known = ", ".join(CATALOGUE)
                self.error(f"{path}.fact", f"unknown fact {fact!r}; known facts: {known}, attributes.<key>")

        op = data.get("op")
        if "op" not in data:
            self.error(f"{path}.op", "is required")
            op = None
        elif not isinstance(op, str) or op not in OPS:
            self.error(f"{path}.op", f"must be one of {', '.join(OPS)}")
            op = None
        elif spec is not None and op not in OPS_BY_KIND[spec.kind]:
            legal = ", ".join(o for o in OPS if o in OPS_BY_KIND[spec.kind])
            self.error(
                f"{path}.op", f"{op!r} does not apply to the {spec.kind.value} fact {fact!r}; use {legal}"
            )
            op = None

        if spec is None or op is None:
            return None
        op = cast(Op, op)
        value_path = f"{path}.value"
        if op in PRESENCE_OPS:
            if "value" in data:
                self.error(value_path, f"must be absent for {op}")
                return None
            return Condition(spec.name, op) if ok else None
        if "value" not in data:
            self.error(value_path, f"is required for {op}")
            return None
        value = self.value(spec.kind, op, data["value"], value_path, spec.choices)
        if value is None or not ok:
            return None
        return Condition(spec.name, op, value)

    def value(self, kind: Kind, op: Op, raw: Any, path: str, choices: tuple[str, ...] | None) -> Value | None:
        if op == "between":
            items = self.items(raw, path, exactly=2)
            if items is None:
                return None
            bounds = [self.integer(item, f"{path}[{index}]") for index, item in enumerate(items)]
            if bounds[0] is None or bounds[1] is None:
                return None
            if bounds[0] > bounds[1]:
                self.error(path, "the lower bound must not exceed the upper bound")
                return None
            return (bounds[0], bounds[1])
        if op in LIST_OPS:
            items = self.items(raw, path)
            if items is None:
                return None
            scalars = [self.scalar(kind, op, item, f"{path}[{i}]", choices) for i, item in enumerate(items)]
            if any(item is None for item in scalars):
                return None
            if kind is Kind.ATTRIBUTE and len({type(item) for item in scalars}) > 1:
                self.error(path, "must hold values of one type: all strings, all integers or all booleans")
                return None
            return tuple(cast("list[Scalar]", scalars))
        return self.scalar(kind, op, raw, path, choices)

    def items(self, raw: Any, path: str, *, exactly: int | None = None) -> list[Any] | None:
        if not isinstance(raw, list):
            self.error(path, "must be a list" if exactly is None else f"must be a list of {exactly} integers")
            return None
        if exactly is not None and len(raw) != exactly:
            self.error(path, f"must be a list of {exactly} integers: [low, high]")
            return None
        if not raw:
            self.error(path, "must not be empty")
            return None
        if len(raw) > MAX_LIST:
            self.error(path, f"must hold at most {MAX_LIST} values")
            return None
        return raw

    def scalar(
        self, kind: Kind, op: Op, raw: Any, path: str, choices: tuple[str, ...] | None
    ) -> Scalar | None:
        if kind is Kind.INTEGER or (kind is Kind.ATTRIBUTE and op in ORDERING_OPS):
            return self.integer(raw, path)
        if kind is Kind.ATTRIBUTE:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, int):
                return self.integer(raw, path)
            if isinstance(raw, str):
                return self.string(raw, path, allow_empty=True)  # "" is a value a CRM may hold
            self.error(path, f"must be a string, an integer or a boolean, not {_describe(raw)}")
            return None
        text = self.string(raw, path)
        if text is not None and choices is not None and text not in choices:
            self.error(path, f"must be one of {', '.join(choices)}, not {text!r}")
            return None
        return text

    def integer(self, raw: Any, path: str) -> int | None:
        if isinstance(raw, bool) or not isinstance(raw, int):
            self.error(path, f"must be an integer, not {_describe(raw)}")
            return None
        if not MIN_INT <= raw <= MAX_INT:
            self.error(path, "must fit in a signed 64-bit integer")
            return None
        return raw

    def string(self, raw: Any, path: str, *, allow_empty: bool = False) -> str | None:
        if not isinstance(raw, str):
            self.error(path, f"must be a string, not {_describe(raw)}")
            return None
        if not raw and not allow_empty:
            self.error(path, "must not be empty")
        elif len(raw) > MAX_STRING:
            self.error(path, f"must be at most {MAX_STRING} characters")
        elif "\x00" in raw:
            self.error(path, "must not contain NUL characters")  # PostgreSQL text cannot hold them
        elif not raw.isascii() and not _encodable(raw):
            self.error(path, "must be valid Unicode")  # a lone surrogate cannot be sent to the database
        else:
            return raw
        return None


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _describe(raw: Any) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, int):
        return "an integer"
    if isinstance(raw, float):
        return f"a number with a fraction ({raw!r})"
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, dict):
        return "an object"
    return type(raw).__name__


# --- serialising and inspecting ---------------------------------------------------------------


def to_json(rule: Rule) -> Any:
    """The rule as JSON data; ``parse_rule(to_json(rule)) == rule``. ``true`` comes back as {"all": []}."""
    if isinstance(rule, AllOf):
        return {"all": [to_json(child) for child in rule.rules]}
    if isinstance(rule, AnyOf):
        return {"any": [to_json(child) for child in rule.rules]}
    if isinstance(rule, Not):
        return {"not": to_json(rule.rule)}
    data: dict[str, Any] = {"fact": rule.fact, "op": rule.op}
    if rule.op not in PRESENCE_OPS:
        data["value"] = list(rule.value) if isinstance(rule.value, tuple) else rule.value
    return data


def facts_used(rule: Rule) -> set[str]:
    """The fact names a rule reads, ``attributes.<key>`` included: what the caller must supply."""
    if isinstance(rule, AllOf | AnyOf):
        return set().union(*(facts_used(child) for child in rule.rules))
    if isinstance(rule, Not):
        return facts_used(rule.rule)
    return {rule.fact}


# --- evaluating -------------------------------------------------------------------------------


def evaluate(rule: Rule, facts: Facts) -> bool:
    if isinstance(rule, AllOf):
        return all(evaluate(child, facts) for child in rule.rules)
    if isinstance(rule, AnyOf):
        return any(evaluate(child, facts) for child in rule.rules)
    if isinstance(rule, Not):
        return not evaluate(rule.rule, facts)
    return _holds(rule, actual_value(rule.fact, facts))


@dataclass(frozen=True, slots=True)
class GroupExplanation:
    kind: Literal["all", "any", "not"]
    passed: bool
    children: tuple[Explanation, ...]


@dataclass(frozen=True, slots=True)
class ConditionExplanation:
    fact: str
    op: Op
    value: Value  # the threshold
    actual: Any  # the member's value: None when null or missing, tags as a sorted tuple
    passed: bool
    gap: int | None = None  # how much more an integer fact needs to pass >, >= or between


Explanation: TypeAlias = GroupExplanation | ConditionExplanation


def explain(rule: Rule, facts: Facts) -> Explanation:
    """The rule's tree with each node's outcome: "what it takes to reach the next tier".

    Every child is evaluated (no short cut), so that the tree shows all that is missing.
    """
    if isinstance(rule, AllOf | AnyOf):
        children = tuple(explain(child, facts) for child in rule.rules)
        if isinstance(rule, AllOf):
            return GroupExplanation("all", all(child.passed for child in children), children)
        return GroupExplanation("any", any(child.passed for child in children), children)
    if isinstance(rule, Not):
        child = explain(rule.rule, facts)
        return GroupExplanation("not", not child.passed, (child,))
    actual = actual_value(rule.fact, facts)
    passed = _holds(rule, actual)
    gap = None
    if not passed and rule.fact in CATALOGUE and CATALOGUE[rule.fact].kind is Kind.INTEGER:
        gap = _gap(rule, actual)
    if isinstance(actual, frozenset):
        actual = tuple(sorted(actual))
    return ConditionExplanation(rule.fact, rule.op, rule.value, actual, passed, gap)


def _gap(rule: Condition, actual: int | None) -> int | None:
    # A null fact has no distance to report: nothing added to "no value" makes it comparable.
    if actual is None:
        return None
    if rule.op == ">=" and isinstance(rule.value, int):
        return rule.value - actual
    if rule.op == ">" and isinstance(rule.value, int):
        return rule.value + 1 - actual
    if rule.op == "between" and isinstance(rule.value, tuple) and actual < int(rule.value[0]):
        return int(rule.value[0]) - actual
    return None  # above a range, or an operator where "more" does not help


def actual_value(fact: str, facts: Facts) -> Any:
    """The member's value of a fact; None for a null fact, a missing attribute or a JSON null."""
    if fact.startswith(ATTRIBUTE_PREFIX):
        return facts.attributes.get(attribute_key(fact))
    return facts.get(fact)


def _holds(rule: Condition, actual: Any) -> bool:
    op, value = rule.op, rule.value
    if rule.fact == "tags":
        tags = cast("frozenset[str]", actual)
        if op == "is_set":
            return bool(tags)
        if op == "is_not_set":
            return not tags
        if op == "contains":
            return value in tags
        if op == "contains_any" and isinstance(value, tuple):
            return not tags.isdisjoint(value)
        if op == "contains_all" and isinstance(value, tuple):
            return tags.issuperset(value)
        raise ValueError(f"invalid condition {rule!r}: build rules with parse_rule")
    if op == "is_set":
        return actual is not None
    if op == "is_not_set":
        return actual is None
    if rule.fact.startswith(ATTRIBUTE_PREFIX):
        # Only a value of the literal's JSON type can match; anything else is false, != included.
        literal = value[0] if isinstance(value, tuple) else value
        if isinstance(literal, bool):
            actual = actual if isinstance(actual, bool) else None
        elif isinstance(literal, int):
            actual = _number(actual)
        elif not isinstance(actual, str):
            actual = None
    if actual is None:
        return False
    if op == "==":
        return bool(actual == value)
    if op == "!=":
        return bool(actual != value)
    if op == "in" and isinstance(value, tuple):
        return actual in value
    if op == "not_in" and isinstance(value, tuple):
        return actual not in value
    if op == "between" and isinstance(value, tuple):
        return bool(value[0] <= actual <= value[1])
    if op == ">" and isinstance(value, int):
        return bool(actual > value)
    if op == ">=" and isinstance(value, int):
        return bool(actual >= value)
    if op == "<" and isinstance(value, int):
        return bool(actual < value)
    if op == "<=" and isinstance(value, int):
        return bool(actual <= value)
    raise ValueError(f"invalid condition {rule!r}: build rules with parse_rule")


def _number(actual: Any) -> Decimal | int | None:
    """A JSON number as PostgreSQL's jsonb holds it: exact. None for anything else."""
    if isinstance(actual, bool):
        return None
    if isinstance(actual, int):
        return actual
    if isinstance(actual, float):
        # JSON encoders write a float's shortest repr, and jsonb keeps those digits exactly.
        return Decimal(repr(actual)) if math.isfinite(actual) else None
    if isinstance(actual, Decimal):
        return actual if actual.is_finite() else None
    return None

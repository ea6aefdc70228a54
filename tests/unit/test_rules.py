"""The rule language, in memory: validation with paths, round trips, evaluation and explanations.

The strategies at the bottom (rules and members) are shared with
tests/integration/test_rules_sql.py, which checks SQL against ``evaluate``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from loyalty.errors import InvalidInput
from loyalty.rules import (
    CATALOGUE,
    LIFECYCLES,
    MAX_DEPTH,
    MAX_LIST,
    MAX_NODES,
    AllOf,
    AnyOf,
    Condition,
    ConditionExplanation,
    Facts,
    GroupExplanation,
    Not,
    Rule,
    RuleError,
    days_since,
    evaluate,
    explain,
    facts_used,
    parse_rule,
    to_json,
)
from loyalty.rules.facts import INTEGER_FACTS

# --- validation -------------------------------------------------------------------------------


def errors_of(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(RuleError) as caught:
        parse_rule(data)
    return caught.value.errors


def spend(op: str, value: Any = None) -> dict[str, Any]:
    return {"fact": "spend", "op": op, "value": value}


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        ({"fact": "spent", "op": ">", "value": 1}, "rule.fact", "unknown fact 'spent'"),
        ({"fact": 3, "op": ">", "value": 1}, "rule.fact", "must be a string"),
        ({"op": ">", "value": 1}, "rule.fact", "is required"),
        ({"fact": "spend", "value": 1}, "rule.op", "is required"),
        ({"fact": "spend", "op": "=~", "value": 1}, "rule.op", "must be one of =="),
        (spend(">", "100"), "rule.value", "must be an integer, not a string"),
        (spend(">", 1.5), "rule.value", "must be an integer, not a number with a fraction"),
        (spend(">", 100.0), "rule.value", "must be an integer"),
        (spend(">", True), "rule.value", "must be an integer, not a boolean"),
        (spend("==", None), "rule.value", "must be an integer, not null"),
        (spend(">", 2**63), "rule.value", "64-bit"),
        (spend(">", -(2**63) - 1), "rule.value", "64-bit"),
        ({"fact": "spend", "op": ">"}, "rule.value", "is required for >"),
        (spend("contains", "x"), "rule.op", "'contains' does not apply to the integer fact 'spend'"),
        (spend("in", []), "rule.value", "must not be empty"),
        (spend("not_in", []), "rule.value", "must not be empty"),
        (spend("in", 3), "rule.value", "must be a list"),
        (spend("in", [1, True]), "rule.value[1]", "not a boolean"),
        (spend("in", list(range(MAX_LIST + 1))), "rule.value", f"at most {MAX_LIST}"),
        (spend("between", [1]), "rule.value", "list of 2 integers"),
        (spend("between", [5, 1]), "rule.value", "lower bound must not exceed"),
        (spend("between", [1, "9"]), "rule.value[1]", "must be an integer"),
        (spend("is_set", None), "rule.value", "must be absent for is_set"),
        (
            {"fact": "lifecycle", "op": "==", "value": "dormant"},
            "rule.value",
            "one of new, active, silent, churned",
        ),
        ({"fact": "lifecycle", "op": "in", "value": ["new", "gone"]}, "rule.value[1]", "one of new, active"),
        ({"fact": "lifecycle", "op": ">", "value": "new"}, "rule.op", "does not apply to the enum fact"),
        ({"fact": "tier", "op": "==", "value": ""}, "rule.value", "must not be empty"),
        ({"fact": "tier", "op": "==", "value": 3}, "rule.value", "must be a string, not an integer"),
        ({"fact": "tier", "op": "==", "value": "a\x00b"}, "rule.value", "NUL"),
        ({"fact": "tier", "op": "==", "value": "\ud800"}, "rule.value", "valid Unicode"),
        ({"fact": "tier", "op": "==", "value": "x" * 257}, "rule.value", "at most 256"),
        ({"fact": "tags", "op": "==", "value": "vip"}, "rule.op", "does not apply to the tags fact"),
        ({"fact": "tags", "op": "contains", "value": ["vip"]}, "rule.value", "must be a string, not a list"),
        ({"fact": "tags", "op": "contains_all", "value": "vip"}, "rule.value", "must be a list"),
        ({"fact": "tags", "op": "contains_any", "value": []}, "rule.value", "must not be empty"),
        ({"fact": "attributes.", "op": "==", "value": 1}, "rule.fact", "attribute keys match"),
        ({"fact": "attributes.a b", "op": "==", "value": 1}, "rule.fact", "attribute keys match"),
        ({"fact": "attributes." + "k" * 65, "op": "==", "value": 1}, "rule.fact", "attribute keys match"),
        (
            {"fact": "attributes.score", "op": "==", "value": 1.5},
            "rule.value",
            "not a number with a fraction",
        ),
        ({"fact": "attributes.score", "op": "==", "value": None}, "rule.value", "not null"),
        ({"fact": "attributes.score", "op": "==", "value": {"a": 1}}, "rule.value", "not an object"),
        (
            {"fact": "attributes.score", "op": ">", "value": "b"},
            "rule.value",
            "must be an integer, not a string",
        ),
        ({"fact": "attributes.score", "op": ">=", "value": True}, "rule.value", "not a boolean"),
        ({"fact": "attributes.score", "op": "in", "value": [1, "1"]}, "rule.value", "of one type"),
        ({"fact": "attributes.score", "op": "in", "value": [1, True]}, "rule.value", "of one type"),
        ({"fact": "attributes.score", "op": "contains", "value": "x"}, "rule.op", "does not apply"),
        ({"fact": "spend", "op": ">", "value": 1, "values": 2}, "rule.values", "is not a key of a condition"),
        ({"all": [], "any": []}, "rule", "takes no other keys"),
        ({"not": spend(">", 1), "fact": "spend"}, "rule", "takes no other keys"),
        ({"all": {"fact": "spend"}}, "rule.all", "must be a list of rules"),
        ({"any": [True, 3]}, "rule.any[1]", "must be an object"),
        ("spend > 3", "rule", "must be an object"),
        (None, "rule", "must be an object"),
        ({}, "rule.fact", "is required"),
        ({"all": [True] * (MAX_LIST + 1)}, "rule.all", f"at most {MAX_LIST} rules"),
    ],
)
def test_invalid_rules_name_the_path(data: Any, path: str, reason: str) -> None:
    errors = errors_of(data)
    assert any(p == path and reason in r for p, r in errors), errors


def test_every_error_is_collected_with_its_path() -> None:
    errors = errors_of(
        {
            "all": [
                spend(">=", 100),
                {"fact": "nope", "op": ">", "value": 1},
                {
                    "any": [
                        {"fact": "orders", "op": ">", "value": True},
                        {"not": {"fact": "tags", "op": "in"}},
                    ]
                },
            ]
        }
    )
    assert [path for path, _ in errors] == [
        "rule.all[1].fact",
        "rule.all[2].any[0].value",
        "rule.all[2].any[1].not.op",
    ]


def test_rule_error_is_an_invalid_input_with_all_errors_in_extra() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_rule({"any": [spend(">", "x"), spend("<", None)]}, path="entry_rule")
    error = caught.value
    assert isinstance(error, RuleError)
    assert (error.path, error.field) == ("entry_rule.any[0].value", "entry_rule.any[0].value")
    assert error.detail == "entry_rule.any[0].value: must be an integer, not a string"
    assert [e["field"] for e in error.extra["errors"]] == [
        "entry_rule.any[0].value",
        "entry_rule.any[1].value",
    ]


def nested_not(depth: int) -> Any:
    rule: Any = spend(">", 1)
    for _ in range(depth - 1):
        rule = {"not": rule}
    return rule


def test_depth_limit() -> None:
    assert parse_rule(nested_not(MAX_DEPTH))
    errors = errors_of(nested_not(MAX_DEPTH + 1))
    assert errors == [("rule" + ".not" * MAX_DEPTH, f"nests deeper than {MAX_DEPTH} levels")]
    # A hostile document far deeper than the limit is refused without recursing through it.
    assert len(errors_of(nested_not(5_000))) == 1


def test_node_limit() -> None:
    wide = {"all": [{"any": [spend(">", i)] * 50} for i in range(5)]}  # 1 + 5 * 51 = 256 nodes
    assert isinstance(parse_rule(wide), AllOf)
    wider = {"all": [*wide["all"], True]}
    assert errors_of(wider) == [("rule.all[5]", f"the rule has more than {MAX_NODES} nodes")]


# --- parsing and round trips ------------------------------------------------------------------


def test_shorthands_and_empty_groups() -> None:
    assert parse_rule(True) == AllOf(())
    assert parse_rule(False) == AnyOf(())
    assert to_json(parse_rule(True)) == {"all": []}
    assert evaluate(parse_rule({"all": []}), Facts()) is True
    assert evaluate(parse_rule({"any": []}), Facts()) is False
    assert evaluate(parse_rule({"not": {"any": []}}), Facts()) is True


def test_parse_builds_the_tree() -> None:
    rule = parse_rule(
        {
            "any": [
                {"fact": "spend", "op": "between", "value": [100, 200]},
                {"not": {"fact": "tags", "op": "contains_all", "value": ["a", "b"]}},
                {"fact": "attributes.vip", "op": "==", "value": True},
                {"fact": "tier", "op": "is_not_set"},
            ]
        }
    )
    assert rule == AnyOf(
        (
            Condition("spend", "between", (100, 200)),
            Not(Condition("tags", "contains_all", ("a", "b"))),
            Condition("attributes.vip", "==", True),
            Condition("tier", "is_not_set"),
        )
    )
    assert facts_used(rule) == {"spend", "tags", "attributes.vip", "tier"}


def test_conditions_compare_literal_types() -> None:
    # True == 1 in Python, but the two literals select different members.
    assert Condition("attributes.x", "==", True) != Condition("attributes.x", "==", 1)
    assert Condition("attributes.x", "in", (1,)) != Condition("attributes.x", "in", (True,))
    assert len({Condition("attributes.x", "==", True), Condition("attributes.x", "==", 1)}) == 2
    assert Condition("spend", ">", 1) == Condition("spend", ">", 1)


# --- evaluation -------------------------------------------------------------------------------

gold = parse_rule(
    {
        "all": [
            {"fact": "qualifying_points", "op": ">=", "value": 5000},
            {
                "any": [
                    {"fact": "orders", "op": ">", "value": 9},
                    {"fact": "spend", "op": "between", "value": [100_00, 500_00]},
                ]
            },
            {"not": {"fact": "lifecycle", "op": "==", "value": "churned"}},
        ]
    }
)


def c(fact: str, op: str, value: Any = None) -> Rule:
    data = {"fact": fact, "op": op} if value is None else {"fact": fact, "op": op, "value": value}
    return parse_rule(data)


def test_evaluate_hand_cases() -> None:
    member = Facts(qualifying_points=5000, orders=3, spend=120_00, lifecycle="active")
    assert evaluate(gold, member)
    assert not evaluate(gold, Facts(qualifying_points=4999, orders=30, lifecycle="active"))
    assert not evaluate(gold, Facts(qualifying_points=9000, orders=30, lifecycle="churned"))
    # No lifecycle: == "churned" is false, so its negation holds.
    assert evaluate(gold, Facts(qualifying_points=9000, orders=30))


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (c("recency_days", "<", 30), False),
        (c("recency_days", ">=", 30), False),
        (c("recency_days", "!=", 30), False),
        (c("recency_days", "not_in", [1, 2]), False),
        (c("recency_days", "between", [-(2**63), 2**63 - 1]), False),
        (c("recency_days", "is_set"), False),
        (c("recency_days", "is_not_set"), True),
        (parse_rule({"not": {"fact": "recency_days", "op": "<", "value": 30}}), True),
        (c("tier", "!=", "gold"), False),
        (c("tier", "not_in", ["gold"]), False),
        (c("attributes.city", "!=", "Paris"), False),
        (c("attributes.city", "is_set"), False),
        (c("tags", "is_set"), False),
        (c("tags", "is_not_set"), True),
        (c("tags", "contains_all", ["a"]), False),
    ],
)
def test_null_and_missing_facts_fail_every_comparison(rule: Rule, expected: bool) -> None:
    assert evaluate(rule, Facts()) is expected
    assert evaluate(Not(rule), Facts()) is not expected


def test_integer_operators() -> None:
    m = Facts(orders=5)
    assert [evaluate(c("orders", op, 5), m) for op in ("==", "!=", ">", ">=", "<", "<=")] == [
        True,
        False,
        False,
        True,
        False,
        True,
    ]
    assert evaluate(c("orders", "between", [5, 5]), m)
    assert not evaluate(c("orders", "between", [6, 9]), m)
    assert evaluate(c("orders", "in", [1, 5]), m)
    assert evaluate(c("orders", "not_in", [1, 6]), m)


def test_enum_and_tags() -> None:
    m = Facts(lifecycle="silent", tier="gold", tags=frozenset({"vip", "b2b"}))
    assert evaluate(c("lifecycle", "in", ["silent", "churned"]), m)
    assert evaluate(c("tier", "!=", "Gold"), m)  # codes are compared exactly
    assert evaluate(c("tags", "contains", "vip"), m)
    assert not evaluate(c("tags", "contains", "VIP"), m)
    assert evaluate(c("tags", "contains_any", ["x", "b2b"]), m)
    assert not evaluate(c("tags", "contains_all", ["vip", "x"]), m)
    assert evaluate(c("tags", "contains_all", ["vip", "b2b", "vip"]), m)
    assert evaluate(c("tags", "is_set"), m)


@pytest.mark.parametrize(
    ("value", "rule", "expected"),
    [
        (3.5, c("attributes.a", ">", 3), True),
        (3.5, c("attributes.a", "<", 4), True),
        (3.5, c("attributes.a", "==", 3), False),
        (3.5, c("attributes.a", "between", [3, 4]), True),
        (3.0, c("attributes.a", "==", 3), True),
        (Decimal("3.000"), c("attributes.a", "in", [1, 3]), True),
        (3, c("attributes.a", "==", 3), True),
        (3, c("attributes.a", "!=", 4), True),
        (float(2**60), c("attributes.a", "==", 2**60), False),  # stored as 1152921504606847000
        (float(2**60), c("attributes.a", "==", 1152921504606847000), True),
        (float("nan"), c("attributes.a", "!=", 3), False),
        ("3", c("attributes.a", "==", 3), False),
        ("3", c("attributes.a", "!=", 3), False),  # a type mismatch is false, != included
        ("3", c("attributes.a", "==", "3"), True),
        ("b", c("attributes.a", "not_in", ["a", "c"]), True),
        ("", c("attributes.a", "==", ""), True),
        ("", c("attributes.a", "is_set"), True),
        (True, c("attributes.a", "==", 1), False),
        (True, c("attributes.a", ">=", 1), False),
        (1, c("attributes.a", "==", True), False),
        (True, c("attributes.a", "==", True), True),
        (False, c("attributes.a", "!=", True), True),
        (None, c("attributes.a", "is_set"), False),
        (None, c("attributes.a", "!=", "x"), False),
        ([1], c("attributes.a", "is_set"), True),
        ([1], c("attributes.a", "==", 1), False),
        ({"x": 1}, c("attributes.a", "!=", "x"), False),
    ],
)
def test_attributes_match_only_values_of_the_literal_type(value: Any, rule: Rule, expected: bool) -> None:
    assert evaluate(rule, Facts(attributes={"a": value})) is expected
    assert evaluate(rule, Facts(attributes={"b": value})) is False


def test_days_since_floors_elapsed_days() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert days_since(None, now=now) is None
    assert days_since(now, now=now) == 0
    assert days_since(now - timedelta(days=1, microseconds=-1), now=now) == 0
    assert days_since(now - timedelta(days=1), now=now) == 1
    assert days_since(now + timedelta(microseconds=1), now=now) == -1


# --- explanations -----------------------------------------------------------------------------


def test_explain_reports_actual_values_and_gaps() -> None:
    member = Facts(qualifying_points=4200, orders=7, spend=80_00, lifecycle="active")
    tree = explain(gold, member)
    assert isinstance(tree, GroupExplanation)
    assert (tree.kind, tree.passed) == ("all", False)
    points, either, not_churned = tree.children
    assert points == ConditionExplanation("qualifying_points", ">=", 5000, 4200, False, 800)
    assert isinstance(either, GroupExplanation) and not either.passed
    assert either.children == (
        ConditionExplanation("orders", ">", 9, 7, False, 3),
        ConditionExplanation("spend", "between", (100_00, 500_00), 80_00, False, 20_00),
    )
    assert isinstance(not_churned, GroupExplanation) and not_churned.passed
    assert not_churned.children == (ConditionExplanation("lifecycle", "==", "churned", "active", False),)
    # The explanation is API-ready.
    assert msgspec.json.decode(msgspec.json.encode(tree))["children"][0]["gap"] == 800


@pytest.mark.parametrize(
    ("rule", "facts", "gap"),
    [
        (c("spend", "between", [10, 20]), Facts(spend=25), None),  # above the range: more does not help
        (c("spend", ">=", 10), Facts(), None),  # null: no distance to report
        (c("spend", ">=", 10), Facts(spend=10), None),  # passed
        (c("spend", "<", 10), Facts(spend=12), None),
        (c("spend", "==", 10), Facts(spend=8), None),
        (c("attributes.a", ">=", 10), Facts(attributes={"a": 8}), None),
        (c("spend", ">", -5), Facts(spend=-9), 5),
    ],
)
def test_gaps_only_where_more_helps(rule: Rule, facts: Facts, gap: int | None) -> None:
    node = explain(rule, facts)
    assert isinstance(node, ConditionExplanation)
    assert node.gap == gap


def test_explain_shows_tags_sorted_and_agrees_with_evaluate() -> None:
    node = explain(c("tags", "contains", "z"), Facts(tags=frozenset({"b", "a"})))
    assert isinstance(node, ConditionExplanation)
    assert (node.actual, node.passed) == (("a", "b"), False)


# --- strategies, shared with the SQL property test -------------------------------------------

INT_FACTS = tuple(spec.name for spec in INTEGER_FACTS)
TIERS = ("gold", "silver", "Gold", "gold ", "ünï")
TAGS = ("vip", "b2b", "VIP", "é", "a,b", '"q"')
ATTRIBUTE_KEYS = ("k1", "k2", "k-3")
WORDS = ("a", "b", "3", "true", "Paris", "ß")

safe_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=4)
# Near the literals below, so that comparisons go both ways; and the extremes of bigint.
member_ints = st.one_of(st.integers(-3, 12), st.sampled_from([-(2**63), 2**63 - 1]))
literal_ints = st.one_of(st.integers(-3, 12), st.sampled_from([-(2**63), 2**63 - 1]))
literal_words = st.one_of(st.sampled_from(WORDS), safe_text)


def _condition(fact: str, op: str, value: Any = None) -> dict[str, Any]:
    if op in ("is_set", "is_not_set"):
        return {"fact": fact, "op": op}
    return {"fact": fact, "op": op, "value": value}


def _leaves(
    facts: tuple[str, ...], ops: tuple[str, ...], values: st.SearchStrategy[Any] = st.none()
) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(_condition, st.sampled_from(facts), st.sampled_from(ops), values)


def _lists(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(values, min_size=1, max_size=4)


ATTRIBUTE_FACTS = tuple(f"attributes.{key}" for key in ATTRIBUTE_KEYS)
COMPARISONS = ("==", "!=", ">", ">=", "<", "<=")
EQUALITY = ("==", "!=")
MEMBERSHIP = ("in", "not_in")
PRESENCE = ("is_set", "is_not_set")
bounds = st.lists(literal_ints, min_size=2, max_size=2).map(sorted)
attribute_scalars = st.one_of(literal_ints, literal_words, st.booleans())
tiers = st.one_of(st.sampled_from(TIERS), safe_text.filter(bool))

# One flat list of branches, each about equally likely: nested one_ofs would be flattened and
# flatmap() counts as one branch, which left attribute leaves rare and some operators unseen.
leaf_documents = st.one_of(
    _leaves(INT_FACTS, COMPARISONS, literal_ints),
    _leaves(INT_FACTS, ("between",), bounds),
    _leaves(INT_FACTS, MEMBERSHIP, _lists(literal_ints)),
    _leaves((*CATALOGUE,), PRESENCE),
    _leaves(ATTRIBUTE_FACTS, PRESENCE),
    _leaves(("lifecycle",), EQUALITY, st.sampled_from(LIFECYCLES)),
    _leaves(("lifecycle",), MEMBERSHIP, _lists(st.sampled_from(LIFECYCLES))),
    _leaves(("tier",), EQUALITY, tiers),
    _leaves(("tier",), MEMBERSHIP, _lists(tiers)),
    _leaves(("tags",), ("contains",), st.sampled_from(TAGS)),
    _leaves(("tags",), ("contains_any", "contains_all"), _lists(st.sampled_from(TAGS))),
    _leaves(ATTRIBUTE_FACTS, COMPARISONS, literal_ints),
    _leaves(ATTRIBUTE_FACTS, ("between",), bounds),
    _leaves(ATTRIBUTE_FACTS, EQUALITY, attribute_scalars),
    _leaves(ATTRIBUTE_FACTS, MEMBERSHIP, _lists(literal_ints)),
    _leaves(ATTRIBUTE_FACTS, MEMBERSHIP, _lists(literal_words)),
    _leaves(ATTRIBUTE_FACTS, MEMBERSHIP, _lists(st.booleans())),
)
shorthands = st.sampled_from([True, False, {"all": []}, {"any": []}])
subtrees = st.recursive(
    st.one_of(leaf_documents, shorthands),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=4).map(lambda rules: {"all": rules}),
        st.lists(children, min_size=1, max_size=4).map(lambda rules: {"any": rules}),
        children.map(lambda rule: {"not": rule}),
    ),
    max_leaves=8,
)
# Left alone, recursive() mostly draws one or two leaves; a group at the top makes rules bigger.
rule_documents = st.one_of(
    subtrees,
    st.builds(
        lambda key, rules: {key: rules},
        st.sampled_from(["all", "any"]),
        st.lists(subtrees, min_size=2, max_size=4),
    ),
    st.lists(subtrees, min_size=1, max_size=3).map(lambda rules: {"not": {"any": rules}}),
)


def _depth(data: Any) -> int:
    if isinstance(data, dict) and ("all" in data or "any" in data):
        return 1 + max((_depth(child) for child in next(iter(data.values()))), default=0)
    if isinstance(data, dict) and "not" in data:
        return 1 + _depth(data["not"])
    return 1


rules: st.SearchStrategy[Rule] = rule_documents.filter(lambda data: _depth(data) <= MAX_DEPTH).map(parse_rule)

# JSON values of every type, the awkward numbers included: fractions, -0.0, integral floats,
# floats whose repr is not their exact value, huge numbers, and numbers as strings.
attribute_values = st.one_of(
    member_ints,
    st.floats(min_value=-5, max_value=15, allow_nan=False),
    st.sampled_from([3.0, 3.5, -0.0, 0.1, 1e20, float(2**60), 2.0000000000000004, 5e-324, 1.7e308]),
    st.integers(-(10**30), 10**30),
    st.sampled_from(WORDS),
    safe_text,
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(WORDS), st.integers(0, 3), max_size=1),
)
attribute_maps = st.dictionaries(st.sampled_from((*ATTRIBUTE_KEYS, "other")), attribute_values, max_size=4)

NOW = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
# Around whole-day boundaries, where a floor done differently would show.
day_offsets = st.builds(
    lambda days, micros: timedelta(days=days, microseconds=micros),
    st.integers(-2, 14),
    st.sampled_from([0, 1, -1, 43_200_000_000, 86_399_999_999]),
)


STORED_INT_FACTS = tuple(name for name in INT_FACTS if name not in ("recency_days", "enrolment_days"))
# One member as the SQL test stores it: raw columns, and timestamps for the derived facts.
member_rows = st.fixed_dictionaries(
    {
        **{name: st.none() | member_ints for name in STORED_INT_FACTS},
        "lifecycle": st.none() | st.sampled_from(LIFECYCLES),
        "tier": st.none() | st.sampled_from(TIERS) | safe_text,
        "tags": st.none() | st.frozensets(st.sampled_from(TAGS), max_size=3).map(sorted),
        "attributes": st.none() | attribute_maps,
        "last_order_at": st.none() | day_offsets.map(lambda offset: NOW - offset),
        "enrolled_at": day_offsets.map(lambda offset: NOW - offset),
    }
)


def facts_of(row: dict[str, Any], *, now: datetime = NOW) -> Facts:
    integers = {name: row[name] for name in INT_FACTS if name in row}
    return Facts(
        **integers,
        recency_days=days_since(row["last_order_at"], now=now),
        enrolment_days=days_since(row["enrolled_at"], now=now),
        lifecycle=row["lifecycle"],
        tier=row["tier"],
        tags=frozenset(row["tags"] or ()),
        attributes=row["attributes"] or {},
    )


members = member_rows.map(facts_of)


# --- properties -------------------------------------------------------------------------------


@given(rule=rules, member=members)
def test_not_negates_and_explain_agrees(rule: Rule, member: Facts) -> None:
    assert evaluate(Not(rule), member) is (not evaluate(rule, member))
    assert explain(rule, member).passed is evaluate(rule, member)


@given(rule=rules)
def test_round_trip(rule: Rule) -> None:
    data = to_json(rule)
    assert parse_rule(data) == rule
    assert parse_rule(msgspec.json.decode(msgspec.json.encode(data))) == rule
    assert to_json(parse_rule(data)) == data


@given(data=rule_documents)
def test_to_json_normalises_only_the_shorthands(data: Any) -> None:
    def normalised(node: Any) -> Any:
        if node is True:
            return {"all": []}
        if node is False:
            return {"any": []}
        if "all" in node or "any" in node:
            key = next(iter(node))
            return {key: [normalised(child) for child in node[key]]}
        if "not" in node:
            return {"not": normalised(node["not"])}
        return node

    try:
        rule = parse_rule(data)
    except RuleError:
        assert _depth(data) > MAX_DEPTH
        return
    assert to_json(rule) == normalised(data)

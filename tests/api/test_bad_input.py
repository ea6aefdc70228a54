"""Bad input answers 4xx application/problem+json naming the field and the reason, and writes nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, counts, field_of, problem
from tests.support import Programme, make_programme

if TYPE_CHECKING:
    from litestar.testing import AsyncTestClient

EARN = {"member_id": "alice", "budget": "base", "points": 10}
LONG = "x" * 129

# (path, body, the field the answer must name). Every case is sent with the operator key (the
# member-token route with crm), so the guard lets it through to validation.
CASES: list[tuple[str, Any, str]] = [
    ("/v1/earn", {**EARN, "points": 0}, "points"),
    ("/v1/earn", {**EARN, "points": -5}, "points"),
    ("/v1/earn", {**EARN, "points": 10**13}, "points"),
    ("/v1/earn", {**EARN, "points": 1.5}, "points"),
    ("/v1/earn", {**EARN, "points": None}, "points"),
    ("/v1/earn", {"budget": "base", "points": 10}, "member_id"),
    ("/v1/earn", {**EARN, "member_id": ""}, "member_id"),
    ("/v1/earn", {**EARN, "member_id": LONG}, "member_id"),
    ("/v1/earn", {**EARN, "member_id": 42}, "member_id"),
    ("/v1/earn", {**EARN, "budget": "Base Budget"}, "budget"),
    ("/v1/earn", {**EARN, "budget": "-base"}, "budget"),
    ("/v1/earn", {**EARN, "reference": "r" * 201}, "reference"),
    ("/v1/earn", {**EARN, "reason": "r" * 501}, "reason"),
    ("/v1/earn", {**EARN, "pending_days": -1}, "pending_days"),
    ("/v1/earn", {**EARN, "pending_days": 366}, "pending_days"),
    ("/v1/earn", {**EARN, "expiry": {"days": 0}}, "expiry.days"),
    ("/v1/earn", {**EARN, "expiry": {"days": 30, "round_to": "week"}}, "expiry.round_to"),
    ("/v1/earn", {**EARN, "expiry": {"days": 30, "extra": 1}}, "extra"),
    ("/v1/earn", {**EARN, "allow_partial": "yes"}, "allow_partial"),
    ("/v1/earn", {**EARN, "metadata": "note"}, "metadata"),
    ("/v1/earn", {**EARN, "bonus": 5}, "bonus"),
    ("/v1/earn", [EARN], "body"),  # the whole body is of the wrong type
    ("/v1/earn", "10", "body"),
    ("/v1/earn/batch", {"items": []}, "items"),
    ("/v1/earn/batch", {"items": [{**EARN, "points": 0}]}, "items[0].points"),
    ("/v1/earn/batch", {"items": [EARN], "mode": "some"}, "mode"),
    ("/v1/spend", {"member_id": "alice", "points": 0}, "points"),
    ("/v1/spend", {"member_id": "alice", "points": "all"}, "points"),
    ("/v1/spend", {"member_id": "alice", "points": 5, "budget": "base"}, "budget"),
    ("/v1/holds", {"member_id": "alice", "points": 5, "timeout_seconds": 0}, "timeout_seconds"),
    ("/v1/holds", {"member_id": "alice", "points": 5, "timeout_seconds": 8 * 24 * 3600}, "timeout_seconds"),
    ("/v1/holds", {"member_id": "alice", "points": -5}, "points"),
    ("/v1/holds/{hold}/capture", {"points": -1}, "points"),
    ("/v1/holds/{hold}/capture", {"points": "some"}, "points"),
    ("/v1/holds/{hold}/capture", {"amount": 1}, "amount"),
    ("/v1/clawbacks", {"member_id": "alice"}, "reference"),
    ("/v1/clawbacks", {"member_id": "alice", "reference": ""}, "reference"),
    ("/v1/clawbacks", {"member_id": "alice", "reference": "order-1", "points": 0}, "points"),
    ("/v1/adjustments", {"member_id": "alice", "points": "five", "reason": "x"}, "points"),
    ("/v1/adjustments", {"member_id": "alice", "points": 10**13, "reason": "x"}, "points"),
    (
        "/v1/adjustments",
        {"member_id": "alice", "points": 5, "reason": "x", "unit_cost_micros": -1},
        "unit_cost_micros",
    ),
    ("/v1/transfers", {"from_member_id": "alice", "to_member_id": "bob", "points": 0}, "points"),
    ("/v1/transfers", {"from_member_id": "alice", "points": 5}, "to_member_id"),
    ("/v1/budgets", {"code": "UPPER", "cap": 1, "unit_cost_micros": 1}, "code"),
    ("/v1/budgets", {"code": "c" * 64, "cap": 1, "unit_cost_micros": 1}, "code"),
    ("/v1/budgets", {"code": "new", "cap": -1, "unit_cost_micros": 1}, "cap"),
    ("/v1/budgets", {"code": "new", "cap": 1}, "unit_cost_micros"),
    ("/v1/budgets", {"code": "new", "cap": 1, "unit_cost_micros": 10**10}, "unit_cost_micros"),
    ("/v1/budgets", {"code": "new", "cap": 1, "unit_cost_micros": 1, "name": "n" * 201}, "name"),
    ("/v1/budgets", {"code": "new", "cap": 1, "unit_cost_micros": 1, "starts_at": "yesterday"}, "starts_at"),
    (
        "/v1/budgets",
        {"code": "new", "cap": 1, "unit_cost_micros": 1, "ends_at": "2026-13-01T00:00:00Z"},
        "ends_at",
    ),
    ("/v1/budgets", {"code": "new", "cap": 1, "unit_cost_micros": 1, "per_member_cap": 0}, "per_member_cap"),
    (
        "/v1/budgets",
        {"code": "new", "cap": 1, "unit_cost_micros": 1, "alert_thresholds": [0]},
        "alert_thresholds[0]",
    ),
    (
        "/v1/budgets",
        {"code": "new", "cap": 1, "unit_cost_micros": 1, "alert_thresholds": [101]},
        "alert_thresholds[0]",
    ),
    ("/v1/budgets", {"code": "new", "cap": 1, "unit_cost_micros": 1, "shards": 65}, "shards"),
    ("/v1/budgets/base/top-up", {"points": 0}, "points"),
    ("/v1/budgets/base/top-up", {}, "points"),
    ("/v1/budgets/moves", {"from_budget": "base", "to_budget": "Other!", "points": 1}, "to_budget"),
    ("/v1/members", {"member_id": ""}, "member_id"),
    ("/v1/members", {"member_id": LONG}, "member_id"),
    ("/v1/members", {"member_id": "carol", "attributes": ["a"]}, "attributes"),
    ("/v1/members", {"member_id": "carol", "attributes": {f"k{i}": i for i in range(65)}}, "attributes"),
    ("/v1/members", {"member_id": "carol", "attributes": {"blob": "x" * 17_000}}, "attributes"),
    ("/v1/member-tokens", {"member_id": "alice", "ttl_seconds": 10}, "ttl_seconds"),
]


# Bad input writes nothing, so the many cases here share one seeded programme per worker
# (made by whichever test runs first) instead of building ~8 rows each; every test compares
# the database before and after its own request, so none depends on another's outcome.
_SEEDED: dict[str, tuple[Programme, dict[str, Any]]] = {}


@pytest.fixture
async def seeded_api(client: AsyncTestClient[Any], engine: AsyncEngine) -> tuple[Api, dict[str, Any]]:
    if "p" not in _SEEDED:
        api = Api(client, await make_programme(engine))
        await api.budget("base")
        await api.budget("other")
        await api.enrol("alice")
        await api.enrol("bob")
        await api.earn("alice", 100, reference="order-1")
        hold = await api.hold("alice", 10)
        _SEEDED["p"] = (api.programme, {"hold": hold["hold_id"]})
    programme, ids = _SEEDED["p"]
    return Api(client, programme), ids


def _names(body: dict[str, Any], field: str) -> bool:
    named = field_of(body)
    return (
        named == field
        or named.endswith(f".{field}")
        or f"`{field}`" in body["detail"]
        or body["detail"].startswith(f"{field}:")
    )


@pytest.mark.parametrize(("path", "body", "field"), CASES, ids=[f"{p} {f}" for p, _, f in CASES])
async def test_bad_body_is_400_naming_the_field(
    seeded_api: tuple[Api, dict[str, Any]], engine: AsyncEngine, path: str, body: Any, field: str
) -> None:
    api, seeded = seeded_api
    before = await counts(engine, api.programme.id)
    balance = await api.balance("alice")
    role = "crm" if path == "/v1/member-tokens" else "operator"
    r = await api.client.post(path.format(**seeded), json=body, headers=api.headers(role))
    problem_body = problem(r, 400)
    assert problem_body["detail"], problem_body
    assert _names(problem_body, field), problem_body
    if problem_body.get("errors"):
        assert problem_body["errors"][0]["reason"]
    assert await counts(engine, api.programme.id) == before
    assert await api.balance("alice") == balance


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/earn", {**EARN, "points": "10"}),
        ("/v1/adjustments", {"member_id": "alice", "points": "5", "reason": "x"}),
        ("/v1/earn", {**EARN, "allow_partial": "true"}),
    ],
)
async def test_numbers_as_strings_are_400(api: Api, engine: AsyncEngine, path: str, body: Any) -> None:
    await api.budget("base")
    await api.enrol("alice")
    before = await counts(engine, api.programme.id)
    r = await api.post(path, body, expect=None)
    try:
        problem(r, 400)
    finally:
        assert await counts(engine, api.programme.id) == before


async def test_unknown_field_is_named_in_errors(api: Api) -> None:
    await api.enrol("alice")
    r = await api.post("/v1/spend", {"member_id": "alice", "points": 1, "bonus": 5}, expect=None)
    assert problem(r, 400)["errors"][0]["field"] == "bonus"


WRITES = [
    "/v1/earn",
    "/v1/earn/batch",
    "/v1/spend",
    "/v1/holds",
    "/v1/holds/{hold}/capture",
    "/v1/clawbacks",
    "/v1/adjustments",
    "/v1/transfers",
    "/v1/budgets",
    "/v1/budgets/base/top-up",
    "/v1/budgets/moves",
    "/v1/members",
]


@pytest.mark.parametrize("path", WRITES)
@pytest.mark.parametrize("raw", [b'{"member_id": ', b"not json", b""], ids=["truncated", "garbage", "empty"])
async def test_malformed_json_is_400(
    seeded_api: tuple[Api, dict[str, Any]], engine: AsyncEngine, path: str, raw: bytes
) -> None:
    api, seeded = seeded_api
    before = await counts(engine, api.programme.id)
    headers = {**api.headers("operator"), "Content-Type": "application/json"}
    r = await api.client.post(path.format(**seeded), content=raw, headers=headers)
    assert problem(r, 400)["detail"]
    assert await counts(engine, api.programme.id) == before


async def test_malformed_json_on_patch_is_400(api: Api) -> None:
    await api.enrol("alice")
    headers = {
        "Authorization": f"Bearer {api.programme.keys['operator']}",
        "Content-Type": "application/json",
    }
    for path in ("/v1/members/alice", "/v1/programme"):
        problem(await api.client.patch(path, content=b"{", headers=headers), 400)


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/members/alice/transactions", {"limit": 0}, "limit"),
        ("/v1/members/alice/transactions", {"limit": 201}, "limit"),
        ("/v1/members/alice/transactions", {"since": "last week"}, "since"),
        ("/v1/members/alice/transactions", {"until": "2026-02-30T00:00:00Z"}, "until"),
        ("/v1/members/alice/transactions", {"cursor": "c" * 101}, "cursor"),
        ("/v1/members/alice/expiring", {"days": 0}, "days"),
        ("/v1/members/alice/expiring", {"days": "soon"}, "days"),
        ("/v1/members/alice/balance", {"expiring_within_days": 367}, "expiring_within_days"),
        ("/v1/members", {"limit": 1001}, "limit"),
        ("/v1/transactions", {}, "reference"),
        ("/v1/transactions", {"reference": ""}, "reference"),
    ],
)
async def test_bad_query_is_400_naming_the_parameter(
    seeded_api: tuple[Api, dict[str, Any]], path: str, params: dict[str, Any], field: str
) -> None:
    api, _ = seeded_api
    body = problem(await api.get(path, params=params, expect=None), 400)
    assert _names(body, field) or field in body["detail"], body


async def test_business_rule_breaches_are_422_and_write_nothing(api: Api, engine: AsyncEngine) -> None:
    await api.budget("base")
    await api.budget("other")
    await api.enrol("alice")
    await api.enrol("bob")
    await api.earn("alice", 100, reference="order-1")
    seeded = {"hold": (await api.hold("alice", 10))["hold_id"]}
    before = await counts(engine, api.programme.id)
    for path, body, code in [
        ("/v1/spend", {"member_id": "alice", "points": 91}, "insufficient_points"),
        ("/v1/holds", {"member_id": "alice", "points": 91}, "insufficient_points"),
        ("/v1/earn", {**EARN, "points": 100_001}, "budget_exhausted"),
        ("/v1/adjustments", {"member_id": "alice", "points": -91, "reason": "x"}, "insufficient_points"),
        (
            "/v1/transfers",
            {"from_member_id": "alice", "to_member_id": "bob", "points": 91},
            "insufficient_points",
        ),
        (
            "/v1/clawbacks",
            {"member_id": "alice", "reference": "order-1", "points": 101},
            "clawback_exceeds_earned",
        ),
        (f"/v1/holds/{seeded['hold']}/capture", {"points": 11}, "capture_exceeds_hold"),
        (
            "/v1/budgets/moves",
            {"from_budget": "base", "to_budget": "other", "points": 10**12},
            "budget_exhausted",
        ),
    ]:
        problem(await api.post(path, body, expect=None), 422, code)
    assert await counts(engine, api.programme.id) == before
    assert await api.balance("alice") == {"available": 90, "pending": 0, "held": 10, "expiring_soon": 0}


async def test_a_missing_required_field_is_named(api: Api, engine: AsyncEngine) -> None:
    before = await counts(engine, api.programme.id)
    r = await api.post("/v1/earn", {"budget": "base", "points": 5}, role="ecommerce", expect=None)
    body = problem(r, 400, "invalid_request")
    assert field_of(body) == "member_id"
    assert "missing required field" in body["detail"]
    assert await counts(engine, api.programme.id) == before

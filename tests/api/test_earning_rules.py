"""Earning rules CRUD and activity settings: validated on save, operator only."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.helpers import Api, field_of, problem

RULE = {
    "code": "spend-earn",
    "name": "1 point per 1 CNY",
    "event_type": "order_completed",
    "formula": {"kind": "per_unit", "points": 1, "per": 100},
    "budget": "base",
}


async def test_create_get_list_patch_deactivate(api: Api) -> None:
    await api.budget("base")
    created = (await api.post("/v1/earning-rules", {**RULE, "cap_per_day": 500})).json()
    assert created["active"] and created["condition"] is True and created["cap_per_day"] == 500
    assert (await api.get("/v1/earning-rules/spend-earn")).json() == created
    assert [r["code"] for r in (await api.get("/v1/earning-rules")).json()] == ["spend-earn"]
    patched = (await api.patch("/v1/earning-rules/spend-earn", {"cap_per_day": 0, "pending_days": 7})).json()
    assert patched["cap_per_day"] is None and patched["pending_days"] == 7 and patched["name"] == RULE["name"]
    off = (await api.post("/v1/earning-rules/spend-earn/deactivate", expect=200)).json()
    assert off["active"] is False
    await api.enrol("m1")
    body = {
        "event_id": "e1",
        "member_id": "m1",
        "type": "order_completed",
        "order_ref": "o1",
        "amount": 1000,
        "currency": "CNY",
    }
    assert (await api.post("/v1/events", body, role="ecommerce")).json()["rules"] == []


async def test_duplicate_code_is_409_and_unknown_is_404(api: Api) -> None:
    await api.budget("base")
    await api.post("/v1/earning-rules", RULE)
    problem(await api.post("/v1/earning-rules", RULE, expect=None), 409, "earning_rule_exists")
    problem(await api.get("/v1/earning-rules/nope", expect=None), 404, "earning_rule_not_found")
    problem(await api.patch("/v1/earning-rules/nope", {"name": "x"}, expect=None), 404)


BAD: list[tuple[dict[str, Any], str]] = [
    ({"budget": "missing"}, "budget"),
    ({"condition": {"fact": "nonsense", "op": "==", "value": 1}}, "condition"),
    ({"formula": {"kind": "per_unit", "points": 1}}, "formula.per"),
    ({"formula": {"kind": "weird", "points": 1}}, "formula.kind"),
    ({"formula": {"kind": "fixed", "points": 0}}, "formula.points"),
    ({"formula": {"kind": "fixed", "points": 1, "multiplier": 1.5}}, "formula.multiplier"),
    ({"formula": {"kind": "fixed", "points": 1, "extra": 1}}, "formula.extra"),
    ({"event_type": "not_declared"}, "event_type"),
    ({"event_type": "order_refunded"}, "event_type"),
    ({"event_type": "signup"}, "formula.kind"),
    ({"event_filter": {"colour": "red"}}, "event_filter.colour"),
    ({"event_filter": {"min_amount": -5}}, "event_filter.min_amount"),
    ({"cap_per_day": 0}, "cap_per_day"),
    ({"starts_at": "2026-02-01T00:00:00Z", "ends_at": "2026-01-01T00:00:00Z"}, "ends_at"),
    ({"code": "Bad Code"}, "code"),
]


@pytest.mark.parametrize(("fields", "field"), BAD)
async def test_invalid_rules_name_the_field(api: Api, fields: dict[str, Any], field: str) -> None:
    await api.budget("base")
    r = await api.post("/v1/earning-rules", {**RULE, **fields}, expect=None)
    assert field_of(problem(r, 400)).startswith(field)
    assert (await api.get("/v1/earning-rules")).json() == []


async def test_only_operators(api: Api) -> None:
    await api.budget("base")
    problem(await api.post("/v1/earning-rules", RULE, role="ecommerce", expect=None), 403)
    problem(await api.get("/v1/earning-rules", role="crm", expect=None), 403)


async def test_settings_roundtrip_and_validation(api: Api) -> None:
    assert (await api.get("/v1/activity/settings")).json()["window_kind"] == "rolling_months"
    good = {
        "window_kind": "calendar_year",
        "window_months": 12,
        "rfm": {
            "recency_days": [7, 30, 90, 180],
            "frequency": [1, 2, 5, 10],
            "monetary": [100, 1000, 5000, 20000],
        },
        "lifecycle": {"new_days": 14, "active_days": 60, "silent_days": 120},
        "custom_event_types": ["quiz_answered"],
    }
    r = await api.client.put("/v1/activity/settings", json=good, headers=api.headers())
    assert r.status_code == 200, r.text
    assert (await api.get("/v1/activity/settings")).json() == good
    for bad, field in [
        ({"rfm": {"frequency": [1, 2, 3]}}, "rfm.frequency"),
        ({"rfm": {"frequency": [3, 2, 1, 0]}}, "rfm.frequency"),
        ({"rfm": {"loyalty": [1, 2, 3, 4]}}, "rfm.loyalty"),
        ({"lifecycle": {"active_days": 200, "silent_days": 100}}, "lifecycle.silent_days"),
        ({"lifecycle": {"sleepy_days": 1}}, "lifecycle.sleepy_days"),
        ({"custom_event_types": ["signup"]}, "custom_event_types[0]"),
        ({"window_kind": "forever"}, "window_kind"),
    ]:
        r = await api.client.put("/v1/activity/settings", json=bad, headers=api.headers())
        assert field_of(problem(r, 400)) == field, bad
    assert (await api.get("/v1/activity/settings")).json() == good

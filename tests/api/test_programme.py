"""The caller's programme: read by every staff key, tuned by operators only."""

from __future__ import annotations

import pytest

from tests.api.helpers import Api, problem


@pytest.mark.parametrize("role", ["operator", "ecommerce", "crm", "marketing"])
async def test_every_staff_role_reads_the_programme(api: Api, role: str) -> None:
    body = (await api.get("/v1/programme", role=role)).json()
    assert body["code"] == api.programme.code
    assert body["currency"] == "CNY" and body["timezone"] == "UTC"
    assert set(body) == {
        "code",
        "name",
        "currency",
        "timezone",
        "clawback_policy",
        "allow_transfers",
        "created_at",
    }


async def test_operator_patches_policy_transfers_timezone_and_name(api: Api) -> None:
    change = {
        "clawback_policy": "clamp",
        "allow_transfers": False,
        "timezone": "Asia/Shanghai",
        "name": "New",
    }
    body = (await api.patch("/v1/programme", change)).json()
    assert {k: body[k] for k in change} == change
    again = (await api.get("/v1/programme", role="crm")).json()
    assert {k: again[k] for k in change} == change
    # An empty patch changes nothing.
    assert (await api.patch("/v1/programme", {})).json() == again


async def test_invalid_timezone_is_400_and_changes_nothing(api: Api) -> None:
    before = (await api.get("/v1/programme")).json()
    body = problem(await api.patch("/v1/programme", {"timezone": "Mars/Olympus"}, expect=None), 400)
    assert body["field"] == "timezone"
    body = problem(await api.patch("/v1/programme", {"timezone": "../etc/passwd"}, expect=None), 400)
    assert body["field"] == "timezone"
    assert (await api.get("/v1/programme")).json() == before


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"clawback_policy": "forgive"}, "clawback_policy"),
        ({"allow_transfers": "yes"}, "allow_transfers"),
        ({"name": ""}, "name"),
        ({"timezone": "x" * 65}, "timezone"),
    ],
)
async def test_invalid_programme_patch_is_400(api: Api, change: dict[str, object], field: str) -> None:
    body = problem(await api.patch("/v1/programme", change, expect=None), 400)
    assert body["errors"][0]["field"] == field


async def test_unknown_field_in_programme_patch_is_400(api: Api) -> None:
    body = problem(await api.patch("/v1/programme", {"currency": "EUR"}, expect=None), 400)
    assert "currency" in body["detail"]


@pytest.mark.parametrize("role", ["ecommerce", "crm", "marketing"])
async def test_only_operators_patch_the_programme(api: Api, role: str) -> None:
    r = await api.patch("/v1/programme", {"allow_transfers": False}, role=role, expect=None)
    problem(r, 403, "role_not_allowed")
    assert (await api.get("/v1/programme")).json()["allow_transfers"] is True

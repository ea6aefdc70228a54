"""Segments through the API: CRUD, bad rules, set-based list and count, one member's segments."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.segments import service as segment_service
from tests.api.helpers import Api, field_of, problem

BIG = {"fact": "spend", "op": ">=", "value": 10_000}
VIP = {"fact": "tags", "op": "contains", "value": "vip"}


async def facts(
    engine: AsyncEngine, api: Api, member: str, *, spend: int = 0, tags: list[str] | None = None
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO member_facts (programme_id, member_id, spend, tags) "
                "SELECT programme_id, id, :s, :t FROM members WHERE programme_id = :p AND external_id = :e"
            ),
            {"p": api.programme.id, "e": member, "s": spend, "t": tags or []},
        )


async def segment(api: Api, code: str, rule: Any, **fields: Any) -> dict[str, Any]:
    return (await api.post("/v1/segments", {"code": code, "rule": rule, **fields})).json()


async def test_crud_and_roles(api: Api) -> None:
    created = await segment(api, "big", BIG, name="Big spenders")
    assert created["code"] == "big" and created["rule"] == BIG and created["name"] == "Big spenders"
    problem(await api.post("/v1/segments", {"code": "big", "rule": BIG}, expect=None), 409, "segment_exists")
    problem(await api.post("/v1/segments", {"code": "x", "rule": BIG}, role="marketing", expect=None), 403)
    assert [s["code"] for s in (await api.get("/v1/segments", role="marketing")).json()["items"]] == ["big"]
    assert (await api.get("/v1/segments/big", role="marketing")).json()["name"] == "Big spenders"
    problem(await api.get("/v1/segments", role="ecommerce", expect=None), 403)
    changed = (await api.patch("/v1/segments/big", {"rule": VIP, "description": "now VIPs"})).json()
    assert (
        changed["rule"] == VIP and changed["name"] == "Big spenders" and changed["description"] == "now VIPs"
    )
    r = await api.client.delete("/v1/segments/big", headers=api.headers())
    assert r.status_code == 204
    problem(await api.get("/v1/segments/big", expect=None), 404, "segment_not_found")


async def test_bad_rules_are_400_naming_the_path(api: Api) -> None:
    rule = {"all": [BIG, {"fact": "spend", "op": "contains", "value": 3}]}
    body = problem(await api.post("/v1/segments", {"code": "bad", "rule": rule}, expect=None), 400)
    assert field_of(body).startswith("rule.all[1]")
    body = problem(
        await api.post("/v1/segments", {"code": "bad", "rule": {"fact": "nope"}}, expect=None), 400
    )
    assert field_of(body).startswith("rule")
    await segment(api, "ok", BIG)
    body = problem(await api.patch("/v1/segments/ok", {"rule": {"any": "x"}}, expect=None), 400)
    assert field_of(body).startswith("rule.any")
    assert (await api.get("/v1/segments/ok")).json()["rule"] == BIG


async def test_members_count_and_membership(api: Api, other: Api, engine: AsyncEngine) -> None:
    spends = {"a": 20_000, "b": 500, "c": 10_000, "d": 0, "e": 15_000}
    for member, spend in spends.items():
        await api.enrol(member)
        await facts(engine, api, member, spend=spend, tags=["vip"] if member in ("b", "c") else [])
    await api.enrol("f")  # no facts row at all: spend counts as 0, no tags
    await segment(api, "big", BIG)
    await segment(api, "vip-or-big", {"any": [BIG, VIP]})
    await segment(api, "quiet", {"not": BIG})

    assert (await api.get("/v1/segments/big/count", role="marketing")).json() == {"code": "big", "count": 3}
    assert (await api.get("/v1/segments/quiet/count")).json()["count"] == 3
    first = (await api.get("/v1/segments/vip-or-big/members", params={"limit": 2})).json()
    assert first["items"] == ["a", "b"] and first["next_cursor"]
    rest = (
        await api.get("/v1/segments/vip-or-big/members", params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    assert rest["items"] == ["c", "e"] and rest["next_cursor"] is None
    problem(await api.get("/v1/segments/big/members", params={"cursor": "zz"}, expect=None), 400)

    assert (await api.get("/v1/members/c/segments")).json() == {
        "member_id": "c",
        "segments": ["big", "vip-or-big"],
    }
    assert (await api.get("/v1/members/f/segments")).json()["segments"] == ["quiet"]
    problem(await api.get("/v1/members/zz/segments", expect=None), 404, "member_not_found")

    # Another programme sees neither the segments nor the members.
    problem(await other.get("/v1/segments/big/count", expect=None), 404)
    assert (await other.get("/v1/segments")).json()["items"] == []
    await segment(other, "big", BIG)
    assert (await other.get("/v1/segments/big/count")).json()["count"] == 0
    problem(await other.get("/v1/members/a/segments", expect=None), 404)


async def test_export_streams_every_member_as_ndjson(
    api: Api, other: Api, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small chunks, so that the export spans several fetches of its server-side cursor.
    monkeypatch.setattr(segment_service, "_EXPORT_CHUNK", 3)
    for n in range(12):
        member = f"m{n:02d}"
        await api.enrol(member)
        await facts(engine, api, member, spend=20_000 if n % 3 else 0)
    await segment(api, "big", BIG)
    r = await api.client.get("/v1/segments/big/members/export", headers=api.headers("marketing"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines == [{"member_id": f"m{n:02d}"} for n in range(12) if n % 3]
    assert len(lines) == (await api.get("/v1/segments/big/count")).json()["count"]
    problem(await api.get("/v1/segments/nope/members/export", expect=None), 404)
    problem(await api.get("/v1/segments/big/members/export", role="ecommerce", expect=None), 403)
    problem(await other.get("/v1/segments/big/members/export", expect=None), 404)

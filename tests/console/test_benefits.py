"""The benefits screen over HTTP: catalogue, tier benefits, campaigns, who is entitled (count,
pages, CSV); refusals name their field and write nothing; lower roles are refused on the server."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api
from tests.console.helpers import console_csrf, login, make_operator
from tests.support import Programme

BENEFIT = {"code": "returns", "type": "quota", "names.en": "Free returns", "names.zh-CN": "免费退货",
           "params.limit": "3", "params.period": "month"}  # fmt: skip


async def _as(client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, role: str) -> str:
    email = await make_operator(engine, programme.code, role)
    assert (await login(client, email)).status_code == 303
    return await console_csrf(client)


async def _silver(api: Api, members: list[str]) -> None:
    """A ladder whose silver every member reaches: each member assessed is silver."""
    everyone = {"fact": "qualifying_points", "op": ">=", "value": 0}
    ladder = {
        "note": "t",
        "tiers": [{"code": "bronze", "rank": 0}, {"code": "silver", "rank": 1, "entry": everyone}],
    }
    version = (await api.post("/v1/tiers/versions", ladder)).json()["version"]
    await api.post(f"/v1/tiers/versions/{version}/publish", {}, expect=200)
    for member in members:
        await api.enrol(member)
        tier = (await api.post(f"/v1/members/{member}/tier/assess", {}, expect=200)).json()
        assert tier["tier"] == "silver"


async def _count(engine: AsyncEngine, table: str, programme: Programme) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                text(f"SELECT count(*) FROM {table} WHERE programme_id = :p"), {"p": programme.id}
            )
            or 0
        )


async def test_catalogue_tier_benefit_entitled_list_and_csv(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    members = [f"m{i:03d}" for i in range(55)]
    await _silver(api, members)
    csrf = await _as(console_client, engine, programme, "marketer")
    r = await console_client.post(
        "/console/benefits", data={**BENEFIT, "_csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/benefits/returns"
    stored = (await api.get("/v1/benefits/returns")).json()
    assert (stored["type"], stored["params"], stored["names"]["zh-CN"]) == (
        "quota", {"limit": 3, "period": "month"}, "免费退货"
    )  # fmt: skip
    r = await console_client.post(
        "/console/tier-benefits",
        data={"tier": "silver", "benefit": "returns", "_csrf": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert (await api.get("/v1/tier-benefits")).json()["items"] == [
        {"tier": "silver", "benefit": "returns", "params": {}}
    ]
    for path in ("/console/benefits", "/console/benefits/new", "/console/benefits/returns"):
        shown = (await console_client.get(path)).text
        assert f'name="_csrf" value="{csrf}"' in shown and 'name="_csrf" value=""' not in shown
    page = await console_client.get("/console/benefits/returns")
    assert 'data-figure="entitled-total">55<' in page.text and 'data-figure="entitled-tier">55<' in page.text
    assert "m000" in page.text and "m049" in page.text and "m050" not in page.text
    assert 'rel="next"' in page.text
    cursor = page.text.split("/members?cursor=", 1)[1].split('"', 1)[0]
    more = await console_client.get(
        f"/console/benefits/returns/members?cursor={cursor}", headers={"HX-Request": "true"}
    )
    assert (
        "m050" in more.text
        and "m054" in more.text
        and "m049" not in more.text
        and 'rel="next"' not in more.text
    )
    csv = await console_client.get("/console/benefits/returns/members.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text.split("\r\n") == ["member_id", *members, ""]

    # Edit: the limit goes to 5; deactivating it is a tick box.
    edit = {"names.en": "Free returns", "names.zh-CN": "免费退货", "params.limit": "5", "params.period": "month",
            "active": "on", "_csrf": csrf}  # fmt: skip
    r = await console_client.post("/console/benefits/returns", data=edit, follow_redirects=False)
    assert r.status_code == 303
    assert (await api.get("/v1/benefits/returns")).json()["params"]["limit"] == 5


async def test_a_campaign_for_a_segment(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await api.post(
        "/v1/segments",
        {"code": "vip", "name": "VIP", "rule": {"fact": "tags", "op": "contains", "value": "vip"}},
    )
    await api.post(
        "/v1/benefits", {"code": "lounge", "type": "flag", "names": {"en": "Lounge", "zh-CN": "贵宾室"}}
    )
    csrf = await _as(console_client, engine, programme, "marketer")
    data = {"code": "spring", "segment": "vip", "benefit": "lounge", "starts_at": "2026-03-01T00:00",
            "ends_at": "2026-02-01T00:00", "_csrf": csrf}  # fmt: skip
    r = await console_client.post("/console/benefit-campaigns", data=data)
    assert r.status_code == 400 and 'id="e-ends_at"' in r.text
    r = await console_client.post(
        "/console/benefit-campaigns", data={**data, "segment": "ghost", "ends_at": "2026-04-01T00:00"}
    )
    assert r.status_code == 400 and 'id="e-segment"' in r.text
    assert await _count(engine, "benefit_campaigns", programme) == 0
    r = await console_client.post(
        "/console/benefit-campaigns", data={**data, "ends_at": "2026-04-01T00:00"}, follow_redirects=False
    )
    assert r.status_code == 303
    listed = (await api.get("/v1/benefit-campaigns")).json()["items"]
    assert [(c["code"], c["segment"], c["benefit"], c["ends_at"][:10]) for c in listed] == [
        ("spring", "vip", "lounge", "2026-04-01")
    ]


async def test_bad_benefits_are_400s_next_to_their_field_and_write_nothing(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    csrf = await _as(console_client, engine, programme, "admin")
    r = await console_client.post(
        "/console/benefits", data={**BENEFIT, "params.period": "fortnight", "_csrf": csrf}
    )
    assert r.status_code == 400 and 'id="e-params.period"' in r.text and "must be one of" in r.text
    r = await console_client.post("/console/benefits", data={**BENEFIT, "names.zh-CN": "", "_csrf": csrf})
    assert r.status_code == 400 and 'id="e-names.en"' in r.text and "zh-CN" in r.text
    r = await console_client.post(
        "/console/benefits", data={**BENEFIT, "params.limit": "many", "_csrf": csrf}
    )
    assert r.status_code == 400 and 'id="e-params.limit"' in r.text
    assert await _count(engine, "benefits", programme) == 0
    r = await console_client.post(
        "/console/tier-benefits", data={"tier": "gold", "benefit": "ghost", "_csrf": csrf}
    )
    assert r.status_code == 404 or r.status_code == 400
    assert await _count(engine, "tier_benefits", programme) == 0


async def test_an_analyst_reads_and_exports_but_cannot_write(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await api.post(
        "/v1/benefits", {"code": "lounge", "type": "flag", "names": {"en": "Lounge", "zh-CN": "贵宾室"}}
    )
    csrf = await _as(console_client, engine, programme, "analyst")
    page = await console_client.get("/console/benefits")
    assert page.status_code == 200 and 'data-benefit="lounge"' in page.text
    assert "New benefit" not in page.text and "New campaign" not in page.text
    assert (await console_client.get("/console/benefits/lounge/members.csv")).status_code == 200
    for path, data in (
        ("/console/benefits", BENEFIT),
        ("/console/benefits/lounge", {"names.en": "x", "names.zh-CN": "y"}),
        ("/console/tier-benefits", {"tier": "bronze", "benefit": "lounge"}),
        ("/console/benefit-campaigns", {"code": "c", "segment": "s", "benefit": "lounge"}),
    ):
        r = await console_client.post(path, data={**data, "_csrf": csrf}, follow_redirects=False)
        assert r.status_code == 403, path
    assert (await api.get("/v1/benefits/lounge")).json()["names"]["en"] == "Lounge"
    assert await _count(engine, "tier_benefits", programme) == 0


async def test_support_cannot_change_what_a_tier_includes(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await api.post(
        "/v1/benefits", {"code": "lounge", "type": "flag", "names": {"en": "Lounge", "zh-CN": "贵宾室"}}
    )
    csrf = await _as(console_client, engine, programme, "support")
    r = await console_client.post(
        "/console/tier-benefits", data={"tier": "bronze", "benefit": "lounge", "_csrf": csrf}
    )
    assert r.status_code == 403

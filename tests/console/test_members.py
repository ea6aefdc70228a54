"""Member 360 over HTTP: search, the page, and the support actions with their server-side checks."""

from __future__ import annotations

import re
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api, counts
from tests.console.helpers import console_csrf, login, make_operator
from tests.support import Programme


async def _as(client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, role: str) -> str:
    email = await make_operator(engine, programme.code, role)
    assert (await login(client, email)).status_code == 303
    return await console_csrf(client)


async def _member(api: Api, member_id: str = "ann-1", points: int = 500, **attributes: Any) -> None:
    await api.budget()
    await api.enrol(member_id, attributes or {"email": f"{member_id}@example.com"})
    await api.earn(member_id, points)


def _key_of(html: str) -> str:
    found = re.search(r'name="key" value="([0-9a-f]{32})"', html)
    assert found, "the confirm step carries no key"
    return found.group(1)


async def test_search_by_id_prefix_and_by_attribute(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    for member_id, email in (
        ("ann-1", "ann@example.com"),
        ("ann-2", "ann2@example.com"),
        ("bob-1", "b@x.io"),
    ):
        await api.enrol(member_id, {"email": email, "age": 30 if member_id == "bob-1" else "30"})
    await _as(console_client, engine, programme, "analyst")

    page = (await console_client.get("/console/members", params={"q": "ann"})).text
    assert "/console/members/ann-1" in page and "/console/members/ann-2" in page
    assert "/console/members/bob-1" not in page
    exact = (await console_client.get("/console/members", params={"q": "ann-1"})).text
    assert "/console/members/ann-1" in exact and "ann-2" not in exact and "exact" in exact

    found = (
        await console_client.get(
            "/console/members", params={"q": "email = ann2@example.com", "by": "attribute"}
        )
    ).text
    assert "/console/members/ann-2" in found and "/console/members/ann-1" not in found
    # A number matches whether the CRM sent it as a number or as text.
    both = (await console_client.get("/console/members", params={"q": "age=30", "by": "attribute"})).text
    assert "/console/members/ann-1" in both and "/console/members/bob-1" in both

    none = (await console_client.get("/console/members", params={"q": "zed"})).text
    assert "No member matches" in none
    bad = await console_client.get("/console/members", params={"q": "no equals sign", "by": "attribute"})
    assert bad.status_code == 400 and "key = value" in bad.text and 'id="e-q"' in bad.text


async def test_search_pages_in_id_order_without_repeats(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    ids = [f"m{i:02d}" for i in range(30)]
    for member_id in reversed(ids):
        await api.enrol(member_id)
    await _as(console_client, engine, programme, "analyst")
    seen: list[str] = []
    url: str | None = "/console/members?q=m"
    while url:
        html = (await console_client.get(url)).text
        seen += re.findall(r'<td><a href="/console/members/(m\d\d)">', html)
        nxt = re.search(r'<a href="([^"]+)" rel="next">', html)
        url = nxt.group(1).replace("&amp;", "&") if nxt else None
    assert seen == ids


async def test_the_360_shows_balance_lots_holds_history_and_facts(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await _member(api, points=500)
    await api.earn("ann-1", 200, reference="order-77", reason="spring promo", expiry={"days": 30})
    hold = await api.hold("ann-1", 120, reference="cart-9")
    await _as(console_client, engine, programme, "analyst")
    page = await console_client.get("/console/members/ann-1")
    assert page.status_code == 200
    html = page.text
    assert 'data-figure="available">580<' in html and 'data-figure="held">120<' in html
    assert "order-77" in html and "spring promo" in html and "cart-9" in html
    assert f"#{hold['hold_id']}" in html
    assert "ann-1@example.com" in html
    # An analyst reads everything and is offered no action.
    assert "Adjust points" not in html and ">Void<" not in html and "Pin tier" not in html
    assert (await console_client.get("/console/members/nobody")).status_code == 404


async def test_an_analyst_forging_an_adjustment_gets_403_and_nothing_changes(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await _member(api)
    hold = await api.hold("ann-1", 50)
    csrf = await _as(console_client, engine, programme, "analyst")
    before = await counts(engine, programme.id)
    forged = {"_csrf": csrf, "points": "1000", "reason": "forged", "confirm": "yes", "key": "a" * 32}
    r = await console_client.post("/console/members/ann-1/adjust", data=forged)
    assert r.status_code == 403 and "member.adjust" in r.text
    r = await console_client.post(
        f"/console/members/ann-1/holds/{hold['hold_id']}/void", data={"_csrf": csrf}
    )
    assert r.status_code == 403
    r = await console_client.post(
        "/console/members/ann-1/tier-pin",
        data={"_csrf": csrf, "pin_kind": "fixed", "pin_tier": "gold", "pin_reason": "x"},
    )
    assert r.status_code == 403
    r = await console_client.post(
        "/console/members/ann-1/grants/1/revoke", data={"_csrf": csrf, "reason": "x"}
    )
    assert r.status_code == 403
    assert await counts(engine, programme.id) == before
    assert (await api.balance("ann-1"))["available"] == 450


async def test_an_adjustment_without_a_reason_is_400_naming_reason_and_writes_nothing(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await _member(api)
    csrf = await _as(console_client, engine, programme, "support")
    before = await counts(engine, programme.id)
    for confirm in ("", "yes"):
        r = await console_client.post(
            "/console/members/ann-1/adjust",
            data={"_csrf": csrf, "points": "100", "reason": "  ", "confirm": confirm, "key": "b" * 32},
        )
        assert r.status_code == 400
        assert 'id="e-reason"' in r.text and "is required" in r.text
        assert 'value="100"' in r.text  # the form keeps what was typed
    r = await console_client.post(
        "/console/members/ann-1/adjust", data={"_csrf": csrf, "points": "0", "reason": "why not"}
    )
    assert r.status_code == 400 and 'id="e-points"' in r.text
    assert await counts(engine, programme.id) == before
    assert (await api.balance("ann-1"))["available"] == 500


async def test_an_adjustment_is_written_only_when_confirmed_and_only_once(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await _member(api)
    csrf = await _as(console_client, engine, programme, "support")
    before = await counts(engine, programme.id)
    form = {"_csrf": csrf, "points": "-120", "reason": "Duplicate order credited twice"}
    preview = await console_client.post("/console/members/ann-1/adjust", data=form)
    assert preview.status_code == 200 and "Confirm the adjustment" in preview.text
    assert 'data-figure="after"><strong>380<' in preview.text
    assert await counts(engine, programme.id) == before  # the first step writes nothing
    confirmed = {**form, "confirm": "yes", "key": _key_of(preview.text)}
    r = await console_client.post("/console/members/ann-1/adjust", data=confirmed, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/members/ann-1?done=adjusted"
    again = await console_client.post("/console/members/ann-1/adjust", data=confirmed, follow_redirects=False)
    assert again.status_code == 303  # a second click replays the same adjustment
    assert (await api.balance("ann-1"))["available"] == 380
    history = (await api.get("/v1/members/ann-1/transactions", params={"kind": "adjust"})).json()["items"]
    assert [(t["amount"], t["reason"]) for t in history] == [(-120, "Duplicate order credited twice")]
    page = (await console_client.get("/console/members/ann-1?done=adjusted")).text
    assert "The adjustment was posted." in page and "Duplicate order credited twice" in page
    # One audit row, in the adjustment's transaction, naming the operator and the reason.
    async with engine.connect() as conn:
        trail = (
            await conn.execute(
                text(
                    "SELECT actor, reason FROM audit_log WHERE programme_id = :p AND action = 'member.adjust_points'"
                ),
                {"p": programme.id},
            )
        ).all()
    assert len(trail) == 1 and trail[0].actor.startswith("operator:")
    assert trail[0].reason == "Duplicate order credited twice"


async def test_a_debit_beyond_the_balance_is_refused_next_to_the_form(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await _member(api, points=100)
    csrf = await _as(console_client, engine, programme, "support")
    form = {"_csrf": csrf, "points": "-5000", "reason": "closing the account"}
    preview = await console_client.post("/console/members/ann-1/adjust", data=form)
    r = await console_client.post(
        "/console/members/ann-1/adjust", data={**form, "confirm": "yes", "key": _key_of(preview.text)}
    )
    assert r.status_code in (400, 409, 422)
    assert 'role="alert"' in r.text or "error-text" in r.text
    assert (await api.balance("ann-1"))["available"] == 100


async def test_support_voids_a_hold_of_this_member_only(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await _member(api)
    await api.enrol("bob-1")
    await api.earn("bob-1", 100)
    mine = await api.hold("ann-1", 200)
    theirs = await api.hold("bob-1", 60)
    csrf = await _as(console_client, engine, programme, "support")
    wrong = await console_client.post(
        f"/console/members/ann-1/holds/{theirs['hold_id']}/void", data={"_csrf": csrf}
    )
    assert wrong.status_code == 404
    assert (await api.balance("bob-1"))["held"] == 60
    r = await console_client.post(
        f"/console/members/ann-1/holds/{mine['hold_id']}/void", data={"_csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303
    assert await api.balance("ann-1") == {"available": 500, "pending": 0, "held": 0, "expiring_soon": 0}


LADDER = {
    "tiers": [
        {"code": "bronze", "rank": 0},
        {"code": "gold", "rank": 1, "entry": {"fact": "qualifying_points", "op": ">=", "value": 5000}},
    ]
}


async def test_every_form_on_the_360_carries_the_sessions_csrf_token(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await _member(api)
    await api.hold("ann-1", 10)
    csrf = await _as(console_client, engine, programme, "admin")
    html = (await console_client.get("/console/members/ann-1")).text
    tokens = re.findall(r'name="_csrf" value="([^"]*)"', html)
    assert len(tokens) >= 4 and set(tokens) == {csrf}


async def test_support_pins_and_unpins_a_tier_with_reasons(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await _member(api)
    version = (await api.post("/v1/tiers/versions", LADDER)).json()["version"]
    await api.post(f"/v1/tiers/versions/{version}/publish", {}, expect=200)
    csrf = await _as(console_client, engine, programme, "support")
    pin = {"_csrf": csrf, "pin_kind": "fixed", "pin_tier": "gold", "pin_until": "2099-12-31"}
    r = await console_client.post("/console/members/ann-1/tier-pin", data={**pin, "pin_reason": ""})
    assert r.status_code == 400 and 'id="e-pin_reason"' in r.text
    r = await console_client.post(
        "/console/members/ann-1/tier-pin", data={**pin, "pin_tier": "platinum", "pin_reason": "x"}
    )
    assert r.status_code == 400 and 'id="e-pin_tier"' in r.text
    r = await console_client.post(
        "/console/members/ann-1/tier-pin", data={**pin, "pin_until": "2001-01-01", "pin_reason": "x"}
    )
    assert r.status_code == 400 and 'id="e-pin_until"' in r.text
    assert (await api.get("/v1/members/ann-1/tier")).json()["pin"] is None
    r = await console_client.post(
        "/console/members/ann-1/tier-pin", data={**pin, "pin_reason": "VIP complaint"}, follow_redirects=False
    )
    assert r.status_code == 303
    tier = (await api.get("/v1/members/ann-1/tier")).json()
    assert tier["tier"] == "gold" and tier["pin"]["reason"] == "VIP complaint"
    assert tier["pin"]["until"].startswith("2100-01-01")  # through the last day
    r = await console_client.post(
        "/console/members/ann-1/tier-unpin", data={"_csrf": csrf, "unpin_reason": ""}
    )
    assert r.status_code == 400 and 'id="e-unpin_reason"' in r.text
    r = await console_client.post(
        "/console/members/ann-1/tier-unpin",
        data={"_csrf": csrf, "unpin_reason": "complaint closed"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert (await api.get("/v1/members/ann-1/tier")).json()["pin"] is None
    history = (await api.get("/v1/members/ann-1/tier/history")).json()["items"]
    assert {"pin_set", "pin_removed"} <= {h["kind"] for h in history}


async def test_support_revokes_a_grant_with_a_reason(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await _member(api)
    await api.post(
        "/v1/benefits", {"code": "lounge", "type": "flag", "names": {"en": "Lounge", "zh-CN": "贵宾室"}}
    )
    grant = (
        await api.post("/v1/members/ann-1/benefit-grants", {"benefit": "lounge", "reason": "vip"}, role="crm")
    ).json()
    csrf = await _as(console_client, engine, programme, "support")
    page = (await console_client.get("/console/members/ann-1")).text
    assert f"grants/{grant['id']}/revoke" in page
    path = f"/console/members/ann-1/grants/{grant['id']}/revoke"
    r = await console_client.post(path, data={"_csrf": csrf, "reason": " "})
    assert r.status_code == 400 and f'id="revoke-reason-{grant["id"]}-e"' in r.text
    assert [e["benefit"] for e in (await api.get("/v1/members/ann-1/entitlements")).json()["items"]] == [
        "lounge"
    ]
    r = await console_client.post(
        path, data={"_csrf": csrf, "reason": "wrong member"}, follow_redirects=False
    )
    assert r.status_code == 303
    assert (await api.get("/v1/members/ann-1/entitlements")).json()["items"] == []
    missing = "/console/members/ann-1/grants/999999999/revoke"
    assert (await console_client.post(missing, data={"_csrf": csrf, "reason": "no such"})).status_code == 404

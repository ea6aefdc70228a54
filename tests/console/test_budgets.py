"""The Budgets screen over HTTP: create, top up, move and close through the ledger's services;
field errors that write nothing; the analyst's forged POSTs refused; the burn chart's data."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.ledger.verify import verify
from tests.api.helpers import Api, counts
from tests.api.test_reports import rolled_up
from tests.console.helpers import console_csrf, login, make_operator
from tests.console.test_dashboard import series
from tests.support import Programme, make_programme


async def as_role(client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, role: str) -> str:
    await login(client, await make_operator(engine, programme.code, role))
    return await console_csrf(client)


async def budget(client: AsyncTestClient[Any], programme: Programme, code: str) -> dict[str, Any]:
    r = await client.get(
        f"/v1/budgets/{code}", headers={"Authorization": f"Bearer {programme.keys['operator']}"}
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def error_of(page: str, field: str) -> str:
    found = re.search(rf'<p class="error-text" id="e-{field}">([^<]*)</p>', page)
    assert found, f"no error next to {field}"
    return found.group(1)


@pytest.fixture
async def programme(engine: AsyncEngine) -> Programme:
    return await make_programme(engine)


async def test_create_top_up_move_and_close(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    c = console_client
    csrf = await as_role(c, engine, programme, "marketer")
    key = uuid.uuid4().hex
    form = {
        "_csrf": csrf, "_key": key, "code": "spring", "name": "Spring sale", "cap": "10000",
        "unit_cost": "0.0125", "alert_thresholds": "50, 90", "per_member_cap": "",
        "starts_at": "", "ends_at": "2027-03-31T23:59",
    }  # fmt: skip
    r = await c.post("/console/budgets", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/budgets/spring?done=created"
    # The same form sent again (a double click): one budget, one allocation.
    again = await c.post("/console/budgets", data=form, follow_redirects=False)
    assert again.status_code == 303
    spring = await budget(c, programme, "spring")
    assert (spring["cap"], spring["unit_cost_micros"], spring["alert_thresholds"]) == (
        10_000,
        12_500,
        [50, 90],
    )
    assert spring["ends_at"].startswith("2027-03-31T23:59")
    page = await c.get("/console/budgets/spring?done=created")
    assert page.status_code == 200 and "Budget created." in page.text
    assert "0.0125 CNY" in page.text and 'data-figure="remaining" data-points="10000"' in page.text

    form = {"_csrf": csrf, "_key": uuid.uuid4().hex, "code": "winter", "cap": "500", "unit_cost": "0.01"}
    assert (await c.post("/console/budgets", data=form, follow_redirects=False)).status_code == 303

    r = await c.post(
        "/console/budgets/spring/top-up",
        data={"_csrf": csrf, "_key": uuid.uuid4().hex, "topup_points": "2500", "topup_reason": "more demand"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].endswith("?done=topped-up")
    assert (await budget(c, programme, "spring"))["cap"] == 12_500

    r = await c.post(
        "/console/budgets/spring/move",
        data={
            "_csrf": csrf,
            "_key": uuid.uuid4().hex,
            "move_to": "winter",
            "move_points": "2000",
            "move_reason": "",
        },
        follow_redirects=False,
    )
    assert r.status_code == 303
    assert (await budget(c, programme, "spring"))["cap"] == 10_500
    assert (await budget(c, programme, "winter"))["cap"] == 2_500

    r = await c.post("/console/budgets/winter/close", data={"_csrf": csrf, "_key": uuid.uuid4().hex},
                     follow_redirects=False)  # fmt: skip
    assert r.status_code == 303
    winter = await budget(c, programme, "winter")
    assert winter["status"] == "closed" and winter["cap"] == 0
    detail = await c.get("/console/budgets/winter")
    assert "Close budget" not in detail.text and "Top up" not in detail.text  # nothing to change now

    async with engine.connect() as conn:
        actors = (
            (
                await conn.execute(
                    text(
                        "SELECT DISTINCT actor FROM transactions WHERE programme_id = :p AND kind LIKE 'budget%'"
                    ),
                    {"p": programme.id},
                )
            )
            .scalars()
            .all()
        )
        assert len(actors) == 1 and actors[0].startswith("operator:")
        assert await verify(conn, programme.id) == []

    listing = await c.get("/console/budgets")
    assert listing.status_code == 200
    # The create form carries this session's token (a form without one is refused).
    create_form = listing.text.split('action="/console/budgets" novalidate>')[1][:200]
    assert f'name="_csrf" value="{csrf}"' in create_form
    assert re.search(r'data-budget="spring".*?data-col="remaining">10,500<', listing.text, re.S)
    assert (await c.get("/console/budgets", params={"status": "closed"})).text.count("data-budget=") == 1
    assert "No budget matches." in (await c.get("/console/budgets", params={"q": "nothing"})).text


async def test_bad_forms_answer_with_the_field_and_write_nothing(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    c = console_client
    csrf = await as_role(c, engine, programme, "admin")
    ok = {"_csrf": csrf, "_key": uuid.uuid4().hex, "code": "base", "cap": "1000", "unit_cost": "0.01"}
    assert (await c.post("/console/budgets", data=ok, follow_redirects=False)).status_code == 303
    ok = {"_csrf": csrf, "_key": uuid.uuid4().hex, "code": "other", "cap": "10", "unit_cost": "0.01"}
    assert (await c.post("/console/budgets", data=ok, follow_redirects=False)).status_code == 303
    before = await counts(engine, programme.id)

    cases = [
        ({"code": "Bad Code", "cap": "10", "unit_cost": "0.01"}, 400, "code", "lowercase"),
        ({"code": "base", "cap": "10", "unit_cost": "0.01"}, 409, "code", "already exists"),
        ({"code": "x1", "cap": "-5", "unit_cost": "0.01"}, 400, "cap", "at least 0"),
        ({"code": "x2", "cap": "10", "unit_cost": "abc"}, 400, "unit_cost", "amount"),
        ({"code": "x3", "cap": "10", "unit_cost": "0.0000001"}, 400, "unit_cost", "six decimals"),
        ({"code": "x4", "cap": "", "unit_cost": "0.01"}, 400, "cap", "required"),
        ({"code": "x5", "cap": "10", "unit_cost": "0.01", "alert_thresholds": "90, 50"}, 400,
         "alert_thresholds", "increasing"),
        ({"code": "x6", "cap": "10", "unit_cost": "0.01", "starts_at": "2027-01-02T00:00",
          "ends_at": "2027-01-01T00:00"}, 400, "ends_at", "after starts_at"),
    ]  # fmt: skip
    for fields, status, field, words in cases:
        r = await c.post("/console/budgets", data={"_csrf": csrf, "_key": uuid.uuid4().hex, **fields})
        assert r.status_code == status, (fields, r.status_code)
        assert words in error_of(r.text, field), (fields, error_of(r.text, field))
        assert '<details class="card create" open' in r.text  # the form stays open with its values

    r = await c.post("/console/budgets/base/top-up", data={"_csrf": csrf, "topup_points": "-100"})
    assert r.status_code == 400 and "at least 1" in error_of(r.text, "topup_points")
    r = await c.post("/console/budgets/base/top-up", data={"_csrf": csrf, "topup_points": "ten"})
    assert r.status_code == 400 and "whole number" in error_of(r.text, "topup_points")
    r = await c.post(
        "/console/budgets/base/move", data={"_csrf": csrf, "move_to": "other", "move_points": "1001"}
    )
    assert r.status_code == 422 and "not enough points" in error_of(r.text, "move_points")
    r = await c.post(
        "/console/budgets/base/move", data={"_csrf": csrf, "move_to": "base", "move_points": "1"}
    )
    assert r.status_code == 400 and "differ" in error_of(r.text, "move_to")
    r = await c.post(
        "/console/budgets/base/move", data={"_csrf": csrf, "move_to": "nope", "move_points": "1"}
    )
    assert r.status_code == 404 and error_of(r.text, "move_to")
    assert await counts(engine, programme.id) == before
    assert (await budget(c, programme, "base"))["cap"] == 1000

    # A form replayed with other figures under its key is refused, not applied.
    key = uuid.uuid4().hex
    data = {"_csrf": csrf, "_key": key, "topup_points": "5"}
    assert (
        await c.post("/console/budgets/base/top-up", data=data, follow_redirects=False)
    ).status_code == 303
    r = await c.post("/console/budgets/base/top-up", data={**data, "topup_points": "6"})
    assert r.status_code == 409 and "already sent" in r.text
    assert (await budget(c, programme, "base"))["cap"] == 1005


async def test_an_analyst_sees_no_write_buttons_and_a_forged_post_is_refused(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await api.budget("base", cap=1_000)
    await api.budget("other", cap=100)
    c = console_client
    csrf = await as_role(c, engine, programme, "analyst")
    listing = await c.get("/console/budgets")
    assert listing.status_code == 200 and "New budget" not in listing.text
    detail = await c.get("/console/budgets/base")
    assert detail.status_code == 200
    assert (
        "Top up" not in detail.text and "Close budget" not in detail.text and "Move points" not in detail.text
    )
    before = await counts(engine, programme.id)
    forged = [
        ("/console/budgets", {"code": "mine", "cap": "10", "unit_cost": "0.01"}),
        ("/console/budgets/base/top-up", {"topup_points": "100"}),
        ("/console/budgets/base/move", {"move_to": "other", "move_points": "10"}),
        ("/console/budgets/base/close", {}),
    ]
    for path, data in forged:
        r = await c.post(path, data={"_csrf": csrf, **data}, follow_redirects=False)
        assert r.status_code == 403, (path, r.status_code)
        assert "Not allowed" in r.text
    # Support may adjust members, not budgets.
    csrf = await as_role(c, engine, programme, "support")
    r = await c.post("/console/budgets/base/top-up", data={"_csrf": csrf, "topup_points": "100"})
    assert r.status_code == 403
    assert await counts(engine, programme.id) == before
    assert (await budget(c, programme, "base"))["cap"] == 1_000


async def test_the_burn_chart_follows_the_earns(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await api.budget("base", cap=1_000)
    await api.member_with("ann", 300)
    await rolled_up(engine)
    await as_role(console_client, engine, programme, "analyst")
    page = (await console_client.get("/console/budgets/base", params={"days": "7"})).text
    drawn = series(page, "chart-budget-burn")
    assert drawn["Issued"] == [0] * 6 + [300]
    assert drawn["Cap"][-1] == 1_000 and drawn["Remaining"][-1] == 700
    await api.earn("ann", 200)
    await api.post("/v1/budgets/base/top-up", {"points": 500}, expect=None)
    await rolled_up(engine)
    page = (await console_client.get("/console/budgets/base", params={"days": "7"})).text
    drawn = series(page, "chart-budget-burn")
    assert (drawn["Issued"][-1], drawn["Cap"][-1], drawn["Remaining"][-1]) == (500, 1_500, 1_000)
    bad = await console_client.get(
        "/console/budgets/base", params={"since": "2026-02-02", "until": "2026-02-01"}
    )
    assert bad.status_code == 400 and error_of(bad.text, "since")
    assert (await console_client.get("/console/budgets/none-such")).status_code == 404

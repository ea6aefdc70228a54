"""The earning-rules screen over HTTP: create a draft, edit, simulate, activate, replay; refusals
name their field and write nothing; a lower role's forged write is a 403."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.helpers import Api
from tests.console.helpers import console_csrf, login, make_operator
from tests.support import Programme

RULE = {
    "code": "spend",
    "name": "Spend",
    "event_type": "order_completed",
    "formula.kind": "per_unit",
    "formula.points": "2",
    "formula.per": "100",
    "condition": "true",
    "budget": "base",
    "priority": "100",
    "qualifying": "on",
}


async def _as(client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, role: str) -> str:
    email = await make_operator(engine, programme.code, role)
    assert (await login(client, email)).status_code == 303
    return await console_csrf(client)


async def _rules(engine: AsyncEngine, programme: Programme) -> list[tuple[str, bool, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT code, active, formula FROM earning_rules WHERE programme_id = :p ORDER BY code"),
            {"p": programme.id},
        )
        return [(r.code, r.active, r.formula) for r in rows]


async def test_create_edit_simulate_and_activate(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await api.budget("base", cap=1_000_000, unit_cost_micros=10_000)
    await api.enrol("m1")
    csrf = await _as(console_client, engine, programme, "marketer")
    r = await console_client.post("/console/rules", data={**RULE, "_csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/rules/spend"
    assert await _rules(engine, programme) == [
        ("spend", False, {"kind": "per_unit", "points": 2, "per": 100})
    ]
    page = await console_client.get("/console/rules")
    assert 'data-rule="spend"' in page.text and "draft" in page.text
    for path in ("/console/rules/spend", "/console/rules/new", "/console/replay"):
        shown = (await console_client.get(path)).text
        assert f'name="_csrf" value="{csrf}"' in shown and 'name="_csrf" value=""' not in shown

    # Edit: 3 points per 1.00, a day cap.
    edit = {**RULE, "formula.points": "3", "cap_per_day": "500", "_csrf": csrf}
    r = await console_client.post("/console/rules/spend", data=edit, follow_redirects=False)
    assert r.status_code == 303, [line for line in r.text.splitlines() if "error" in line or "alert" in line]
    assert (await _rules(engine, programme))[0][2]["points"] == 3

    # Simulate an order of 12.34 against the draft: 3 x 12 = 36 points, 0.36 at 0.01 a point.
    sim = {"member_id": "m1", "type": "order_completed", "amount": "1234", "currency": "CNY", "_csrf": csrf}
    r = await console_client.post("/console/rules/spend/simulate", data=sim, headers={"HX-Request": "true"})
    assert r.status_code == 200, r.text
    assert 'data-figure="sim-points">36<' in r.text
    assert 'data-figure="sim-cost">0.36<' in r.text
    assert 'data-figure="sim-fired">spend<' in r.text
    # Nothing was written: still a draft, no event, no points.
    assert (await _rules(engine, programme))[0][1] is False
    async with engine.connect() as conn:
        events = await conn.scalar(
            text("SELECT count(*) FROM member_events WHERE programme_id = :p"), {"p": programme.id}
        )
    assert events == 0
    assert (await api.get("/v1/members/m1/balance")).json()["available"] == 0

    r = await console_client.post(
        "/console/rules/spend/activate", data={"_csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303
    assert (await _rules(engine, programme))[0][1] is True
    order = {"event_id": "e1", "member_id": "m1", "type": "order_completed", "order_ref": "o1", "amount": 1000,
             "currency": "CNY"}  # fmt: skip
    assert (await api.post("/v1/events", order, role="ecommerce")).json()["points"] == 30
    r = await console_client.post(
        "/console/rules/spend/deactivate", data={"_csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303
    assert (await _rules(engine, programme))[0][1] is False


async def test_a_bad_rule_is_a_400_next_to_its_field_and_writes_nothing(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await api.budget("base")
    csrf = await _as(console_client, engine, programme, "admin")
    bad = {**RULE, "formula.per": "0", "_csrf": csrf}
    r = await console_client.post("/console/rules", data=bad)
    assert r.status_code == 400
    assert 'id="e-formula.per"' in r.text and "must be a positive integer" in r.text
    bad = {**RULE, "condition": '{"fact": "nope", "op": "eq", "value": 1}', "_csrf": csrf}
    r = await console_client.post("/console/rules", data=bad)
    assert r.status_code == 400 and 'id="e-condition"' in r.text
    bad = {**RULE, "budget": "missing", "_csrf": csrf}
    r = await console_client.post("/console/rules", data=bad)
    assert r.status_code == 400 and 'id="e-budget"' in r.text
    assert await _rules(engine, programme) == []
    # An edit refused leaves the stored rule as it was.
    assert (await console_client.post("/console/rules", data={**RULE, "_csrf": csrf})).status_code == 200
    r = await console_client.post(
        "/console/rules/spend", data={**RULE, "condition": "{not json", "_csrf": csrf}
    )
    assert r.status_code == 400 and 'id="e-condition"' in r.text and "not valid JSON" in r.text
    assert (await _rules(engine, programme))[0][2]["points"] == 2
    # A simulation for an unknown member names the field.
    sim = {"member_id": "ghost", "type": "order_completed", "amount": "100", "currency": "CNY", "_csrf": csrf}
    r = await console_client.post("/console/rules/spend/simulate", data=sim)
    assert r.status_code == 400 or r.status_code == 404


async def test_an_analyst_cannot_write_rules_even_by_a_forged_post(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    api = Api(console_client, programme)
    await api.budget("base")
    await api.post("/v1/earning-rules", {"code": "spend", "event_type": "signup", "budget": "base",
                                         "formula": {"kind": "fixed", "points": 5}})  # fmt: skip
    csrf = await _as(console_client, engine, programme, "analyst")
    page = await console_client.get("/console/rules/spend")
    assert page.status_code == 200 and "Deactivate" not in page.text and "Create draft" not in page.text
    for path, data in (
        ("/console/rules", RULE),
        ("/console/rules/spend", RULE),
        ("/console/rules/spend/deactivate", {}),
        ("/console/replay", {"rule": "spend", "since": "2026-01-01", "until": "2026-02-01"}),
    ):
        r = await console_client.post(path, data={**data, "_csrf": csrf}, follow_redirects=False)
        assert r.status_code == 403, path
    assert await _rules(engine, programme) == [("spend", True, {"kind": "fixed", "points": 5})]
    async with engine.connect() as conn:
        jobs = await conn.scalar(
            text("SELECT count(*) FROM job_runs WHERE programme_id = :p"), {"p": programme.id}
        )
    assert jobs == 0


async def test_replay_is_queued_and_its_page_shows_progress_then_the_result(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    from loyalty.activity import replay_tasks

    api = Api(console_client, programme)
    await api.budget("base", cap=1_000_000, unit_cost_micros=10_000)
    await api.enrol("m1")
    await api.post("/v1/earning-rules", {"code": "spend", "event_type": "order_completed", "budget": "base",
                                         "formula": {"kind": "per_unit", "points": 1, "per": 100}})  # fmt: skip
    order = {"event_id": "e1", "member_id": "m1", "type": "order_completed", "order_ref": "o1", "amount": 1000,
             "currency": "CNY"}  # fmt: skip
    await api.post("/v1/events", order, role="ecommerce")
    csrf = await _as(console_client, engine, programme, "marketer")
    form = await console_client.get("/console/replay")
    assert form.status_code == 200 and 'name="rule" value="spend"' in form.text
    # A period that ends before it starts names the field and queues nothing.
    bad = {"rule": "spend", "since": "2026-05-02", "until": "2026-05-01", "_csrf": csrf}
    r = await console_client.post("/console/replay", data=bad)
    assert r.status_code == 400 and 'id="e-until"' in r.text
    await console_client.post(
        "/console/rules",
        data={**RULE, "code": "double", "formula.points": "2", "_csrf": csrf},
    )
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).date()
    data = {"rule": ["double"], "since": (today - timedelta(days=90)).isoformat(), "until": today.isoformat(),
            "_csrf": csrf}  # fmt: skip
    r = await console_client.post("/console/replay", data=data, follow_redirects=False)
    assert r.status_code == 303, r.text
    job_path = r.headers["location"]
    job_id = job_path.rsplit("/", 1)[1]
    page = await console_client.get(job_path, headers={"HX-Request": "true"})
    assert page.status_code == 200 and 'data-status="queued"' in page.text
    full = await console_client.get(job_path)
    assert 'hx-trigger="every 700ms"' in full.text
    # What the worker would do, here in the test.
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT result FROM job_runs WHERE job_id = :j"), {"j": job_id})).one()
    assert row.result is None or "progress" not in (row.result or {})
    principal = {"programme_id": programme.id, "programme_code": programme.code, "role": "operator"}
    req = {"rules": [{"code": "double", "name": "Spend", "event_type": "order_completed",
                      "formula": {"kind": "per_unit", "points": 2, "per": 100}, "budget": "base"}],
           "since": f"{today - timedelta(days=90)}T00:00:00+00:00", "until": f"{today + timedelta(days=1)}T00:00:00+00:00"}  # fmt: skip
    await replay_tasks.replay_earning_rules({"engine": engine, "job_id": job_id}, principal, req)
    page = await console_client.get(job_path)
    assert page.status_code == 200
    assert 'data-status="succeeded"' in page.text
    assert 'data-figure="draft-points">20<' in page.text and 'data-figure="actual-points">10<' in page.text
    assert 'id="chart-replay-points"' in page.text and "hx-trigger" not in page.text
    done = await console_client.get(job_path, headers={"HX-Request": "true"})
    assert done.status_code == 200 and done.headers["hx-refresh"] == "true"  # the page, with its charts

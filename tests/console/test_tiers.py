"""The tier ladder screen over HTTP: drafts, the editor, backtest, publish, explanations, roles."""

from __future__ import annotations

import re
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.console.ladder_form import ladder_of, rows_of
from tests.console.helpers import console_csrf, login, make_operator
from tests.support import Programme


async def _members(
    client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, points: dict[str, int]
) -> None:
    for member, qualifying in points.items():
        r = await client.post(
            "/v1/members",
            json={"member_id": member},
            headers={
                "Authorization": f"Bearer {programme.keys['crm']}",
                "Idempotency-Key": f"enrol-{member}",
            },
        )
        assert r.status_code == 201, r.text
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO member_facts (programme_id, member_id, qualifying_points) "
                    "SELECT programme_id, id, :q FROM members WHERE programme_id = :p AND external_id = :e "
                    "ON CONFLICT (programme_id, member_id) DO UPDATE SET qualifying_points = EXCLUDED.qualifying_points"
                ),
                {"p": programme.id, "e": member, "q": qualifying},
            )


async def _versions(engine: AsyncEngine, programme: Programme) -> list[tuple[int, str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT version, status, definition FROM tier_ladder_versions WHERE programme_id = :p ORDER BY version"
            ),
            {"p": programme.id},
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def _ladder_form(csrf: str, silver_points: str = "1000") -> dict[str, str]:
    return {
        "_csrf": csrf,
        "tiers[0].code": "base", "tiers[0].name": "Member", "tiers[0].rank": "0",
        "tiers[1].code": "silver", "tiers[1].name": "Silver", "tiers[1].rank": "1", "tiers[1].match": "all",
        "tiers[1].points": silver_points, "tiers[1].keep_points": "500", "tiers[1].months": "12",
        "tiers[1].round_to": "month", "tiers[1].downgrade_policy": "one_step", "tiers[1].grace_days": "30",
        "tiers[2].code": "gold", "tiers[2].rank": "2", "tiers[2].match": "any",
        "tiers[2].points": "5000", "tiers[2].spend": "100000",
        "tiers[2].rule": '{"fact": "lifecycle", "op": "!=", "value": "churned"}',
        "tiers[3].code": "", "tiers[3].rank": "3",
        "note": "spring ladder",
    }  # fmt: skip


async def test_a_marketer_drafts_edits_backtests_and_publishes(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    await _members(console_client, engine, programme, {"a": 0, "b": 1200, "c": 7000})
    await login(console_client, await make_operator(engine, programme.code, "marketer"))
    csrf = await console_csrf(console_client)
    empty = await console_client.get("/console/tiers")
    assert empty.status_code == 200 and "No ladder versions yet" in empty.text
    r = await console_client.post("/console/tiers/drafts", data={"_csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/tiers/1/edit"
    editor = await console_client.get("/console/tiers/1/edit")
    assert editor.status_code == 200 and 'name="tiers[0].code" type="text" value="base"' in editor.text
    # The editor's own form carries the token (besides the header's switch and logout forms).
    assert editor.text.count(f'name="_csrf" value="{csrf}"') == 3
    saved = await console_client.post(
        "/console/tiers/1/edit", data=_ladder_form(csrf), follow_redirects=False
    )
    assert saved.status_code == 303, saved.text
    [(version, status, definition)] = await _versions(engine, programme)
    assert (version, status) == (1, "draft")
    silver, gold = definition["tiers"][1], definition["tiers"][2]
    assert silver["entry"] == {"fact": "qualifying_points", "op": ">=", "value": 1000}
    assert silver["retention"] == {"fact": "qualifying_points", "op": ">=", "value": 500}
    assert silver["validity"] == {"months": 12, "round_to": "month"} and silver["grace_days"] == 30
    assert gold["entry"] == {
        "all": [
            {
                "any": [
                    {"fact": "qualifying_points", "op": ">=", "value": 5000},
                    {"fact": "spend", "op": ">=", "value": 100000},
                ]
            },
            {"fact": "lifecycle", "op": "!=", "value": "churned"},
        ]
    }
    # The editor shows the saved ladder again as it was entered.
    again = await console_client.get("/console/tiers/1/edit")
    assert 'name="tiers[2].spend" type="number" value="100000"' in again.text

    backtest = await console_client.get("/console/tiers/1/backtest")
    assert backtest.status_code == 200
    assert re.search(r'data-figure="up">2<', backtest.text) and re.search(
        r'data-figure="down">0<', backtest.text
    )
    assert 'data-member="b"' in backtest.text and 'data-member="c"' in backtest.text
    assert 'data-member="a"' not in backtest.text
    down = await console_client.get("/console/tiers/1/backtest?direction=down")
    assert "Nobody would change tier." in down.text

    confirm = await console_client.get("/console/tiers/1/publish")
    assert confirm.status_code == 200 and "data-confirm" in confirm.text
    published = await console_client.post(
        "/console/tiers/1/publish", data={"_csrf": csrf, "reassess": "1"}, follow_redirects=False
    )
    assert published.status_code == 303
    assert [(v, s) for v, s, _ in await _versions(engine, programme)] == [(1, "published")]
    refused = await console_client.post(
        "/console/tiers/1/edit", data=_ladder_form(csrf), follow_redirects=False
    )
    assert refused.status_code == 409 and "Only a draft can be edited." in refused.text

    # Each change is in the audit log, as the operator who made it.
    async with engine.connect() as conn:
        trail = (
            await conn.execute(
                text(
                    "SELECT action, actor FROM audit_log WHERE programme_id = :p AND entity_type = 'tier_ladder'"
                    " ORDER BY id"
                ),
                {"p": programme.id},
            )
        ).all()
    assert [a for a, _ in trail] == ["tier_ladder.draft", "tier_ladder.update_draft", "tier_ladder.publish"]
    assert {actor for _, actor in trail} == {trail[0][1]} and trail[0][1].startswith("operator:")

    # The next draft starts as a copy of the ladder in force.
    r = await console_client.post("/console/tiers/drafts", data={"_csrf": csrf}, follow_redirects=False)
    assert r.headers["location"] == "/console/tiers/2/edit"
    assert (await _versions(engine, programme))[1][2] == definition

    explained = await console_client.get("/console/tiers/explain", params={"member_id": "b"})
    assert explained.status_code == 200
    assert 'data-figure="tier">base<' in explained.text or 'data-figure="tier">silver<' in explained.text
    assert "What gold takes" in explained.text or "What silver takes" in explained.text
    missing = await console_client.get("/console/tiers/explain", params={"member_id": "nobody"})
    assert missing.status_code == 404 and "No member with this id" in missing.text


async def test_a_bad_threshold_is_400_next_to_its_field_and_writes_nothing(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    await login(console_client, await make_operator(engine, programme.code, "marketer"))
    csrf = await console_csrf(console_client)
    await console_client.post("/console/tiers/drafts", data={"_csrf": csrf})
    before = await _versions(engine, programme)
    r = await console_client.post("/console/tiers/1/edit", data=_ladder_form(csrf, silver_points="lots"))
    assert r.status_code == 400
    assert re.search(r'id="e-tiers\[1\]\.points">must be a whole number<', r.text), r.text
    assert 'value="lots"' in r.text  # the form comes back as it was sent
    bad_rule = {**_ladder_form(csrf), "tiers[2].rule": '{"fact": "lifecycle", "op": ">=", "value": 3}'}
    r = await console_client.post("/console/tiers/1/edit", data=bad_rule)
    assert r.status_code == 400 and 'id="e-tiers[2].rule"' in r.text
    base_grace = {**_ladder_form(csrf), "tiers[0].grace_days": "5"}
    r = await console_client.post("/console/tiers/1/edit", data=base_grace)
    assert r.status_code == 400 and re.search(
        r'id="e-tiers\[0\]\.grace_days">the base tier has no grace<', r.text
    )
    r = await console_client.post("/console/tiers/1/publish", data={"_csrf": csrf, "effective_at": "soon"})
    assert r.status_code == 400 and re.search(r'id="e-effective_at">expected a date and time', r.text)
    assert await _versions(engine, programme) == before


async def test_an_analyst_reads_but_a_forged_write_is_403(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    await login(console_client, await make_operator(engine, programme.code, "marketer"))
    csrf = await console_csrf(console_client)
    await console_client.post("/console/tiers/drafts", data={"_csrf": csrf})
    await console_client.post("/console/logout", data={"_csrf": csrf})
    await login(console_client, await make_operator(engine, programme.code, "analyst"))
    csrf = await console_csrf(console_client)
    page = await console_client.get("/console/tiers")
    assert (
        page.status_code == 200 and "New draft" not in page.text and "/console/tiers/1/edit" not in page.text
    )
    assert (await console_client.get("/console/tiers/1/backtest")).status_code == 200
    explained = await console_client.get("/console/tiers/explain", params={"member_id": "anyone"})
    assert explained.status_code == 404 and "No member with this id" in explained.text
    before = await _versions(engine, programme)
    for path, data in (
        ("/console/tiers/drafts", {"_csrf": csrf}),
        ("/console/tiers/1/edit", _ladder_form(csrf)),
        ("/console/tiers/1/publish", {"_csrf": csrf}),
    ):
        r = await console_client.post(path, data=data, follow_redirects=False)
        assert r.status_code == 403, path
    assert (await console_client.get("/console/tiers/1/edit")).status_code == 403
    assert await _versions(engine, programme) == before


def test_the_editor_round_trips_a_stored_ladder() -> None:
    definition = {
        "tiers": [
            {"code": "base", "rank": 0, "entry": {"all": []}, "retention": {"all": []}},
            {
                "code": "vip",
                "rank": 1,
                "entry": {
                    "any": [
                        {"fact": "tags", "op": "contains", "value": "vip"},
                        {"fact": "orders", "op": ">=", "value": 3},
                    ]
                },
                "retention": {"fact": "orders", "op": ">=", "value": 1},
                "validity": {"months": 6, "round_to": "none"},
                "bonus": {"budget": "promo", "points": 50},
            },
        ]
    }
    rows = rows_of(definition)
    assert rows[1]["orders"] == "" and rows[1]["rule"]  # not thresholds alone: kept whole as JSON
    assert rows[1]["keep_orders"] == "1" and rows[1]["bonus_points"] == "50"
    values = {f"tiers[{i}].{k}": v for i, row in enumerate(rows) for k, v in row.items()}
    body, origin = ladder_of(values)
    assert origin == [0, 1]
    assert body["tiers"][1]["entry"] == definition["tiers"][1]["entry"]
    assert body["tiers"][1]["retention"] == definition["tiers"][1]["retention"]
    assert body["tiers"][1]["bonus"] == {"budget": "promo", "points": 50}


async def test_backtest_movers_page_by_keyset_and_direction(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    import msgspec

    from loyalty.http.principal import Principal
    from loyalty.tiers import schemas as s
    from loyalty.tiers import service

    await _members(
        console_client, engine, programme, {"m1": 1200, "m2": 0, "m3": 1500, "m4": 9000, "m5": 2000}
    )
    who = Principal(programme_id=programme.id, programme_code=programme.code, role="operator")
    body = ladder_of(_ladder_form("x"))[0]
    async with engine.begin() as conn:
        created = await service.create_version(conn, who, msgspec.convert(body, s.LadderCreate))
    version = created.version
    seen: list[str] = []
    after = None
    async with engine.connect() as conn:
        while True:
            page = await service.backtest_movers(conn, who, version, after=after, limit=2)
            seen += [m.member_id for m in page.items]
            assert len(page.items) <= 2
            if page.next_cursor is None:
                break
            after = page.next_cursor
        up = await service.backtest_movers(conn, who, version, direction="up", limit=10)
        down = await service.backtest_movers(conn, who, version, direction="down", limit=10)
    assert seen == ["m1", "m3", "m4", "m5"]  # everyone but m2 moves up from no tier
    assert [m.member_id for m in up.items] == seen and down.items == [] and up.next_cursor is None
    assert {m.member_id: m.to_tier for m in up.items}["m4"] == "gold"

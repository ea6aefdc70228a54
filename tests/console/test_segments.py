"""The segments screen over HTTP: builder and live count, save, members, CSV export, roles."""

from __future__ import annotations

import re
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.console.segment_form import rows_of, rule_of
from tests.console.helpers import console_csrf, login, make_operator
from tests.support import Programme

POINTS = {"m1": 0, "m2": 1500, "m3": 4000, "m4": 900}


async def _members(client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme) -> None:
    for member, qualifying in POINTS.items():
        r = await client.post(
            "/v1/members",
            json={"member_id": member, "attributes": {"city": "Lyon" if member != "m3" else "Paris"}},
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
                    "SELECT programme_id, id, :q FROM members WHERE programme_id = :p AND external_id = :e"
                ),
                {"p": programme.id, "e": member, "q": qualifying},
            )


async def _segments(engine: AsyncEngine, programme: Programme) -> list[tuple[str, str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT code, name, rule FROM segments WHERE programme_id = :p ORDER BY code"),
            {"p": programme.id},
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


def _builder(csrf: str, value: str = "1000", **more: str) -> dict[str, str]:
    return {
        "_csrf": csrf, "code": "engaged", "name": "Engaged", "description": "", "match": "all",
        "c0.fact": "qualifying_points", "c0.op": ">=", "c0.value": value,
        "c1.fact": "attribute", "c1.key": "city", "c1.op": "==", "c1.value": "Lyon",
        "c2.fact": "", "c2.op": ">=", "c2.value": "",
        **more,
    }  # fmt: skip


def _count(html: str) -> int:
    found = re.search(r'data-figure="live-count">(\d+)<', html)
    assert found, html
    return int(found.group(1))


async def test_a_marketer_builds_saves_lists_exports_edits_and_deletes(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    await _members(console_client, engine, programme)
    await login(console_client, await make_operator(engine, programme.code, "marketer"))
    csrf = await console_csrf(console_client)
    empty = await console_client.get("/console/segments")
    assert empty.status_code == 200 and "No segments yet" in empty.text
    builder = await console_client.get("/console/segments/new")
    assert builder.status_code == 200 and builder.text.count(f'name="_csrf" value="{csrf}"') == 3

    # The live count: an htmx GET with the form as it stands; it writes nothing.
    headers = {"HX-Request": "true"}
    one = await console_client.get("/console/segments/preview", params=_builder(csrf), headers=headers)
    assert one.status_code == 200 and _count(one.text) == 1  # m2: 1500 points and Lyon
    any_ = await console_client.get(
        "/console/segments/preview", params=_builder(csrf, match="any"), headers=headers
    )
    assert _count(any_.text) == 4
    wider = await console_client.get(
        "/console/segments/preview", params=_builder(csrf, "500", **{"c1.fact": ""}), headers=headers
    )
    assert _count(wider.text) == 3
    bad = await console_client.get(
        "/console/segments/preview", params=_builder(csrf, "lots"), headers=headers
    )
    assert "must be a whole number" in bad.text
    assert await _segments(engine, programme) == []

    saved = await console_client.post("/console/segments", data=_builder(csrf), follow_redirects=False)
    assert saved.status_code == 303 and saved.headers["location"] == "/console/segments/engaged?saved=1"
    [(code, name, rule)] = await _segments(engine, programme)
    assert (code, name) == ("engaged", "Engaged")
    assert rule == {
        "all": [
            {"fact": "qualifying_points", "op": ">=", "value": 1000},
            {"fact": "attributes.city", "op": "==", "value": "Lyon"},
        ]
    }
    again = await console_client.post("/console/segments", data=_builder(csrf), follow_redirects=False)
    assert again.status_code == 409 and 'id="e-code"' in again.text

    shown = await console_client.get("/console/segments/engaged")
    assert re.search(r'data-figure="count">1<', shown.text) and 'data-member="m2"' in shown.text

    edited = await console_client.post(
        "/console/segments/engaged/edit",
        data=_builder(csrf, "800", **{"c1.fact": "", "name": ""}),
        follow_redirects=False,
    )
    assert edited.status_code == 303
    assert (await _segments(engine, programme))[0][1] == ""  # a cleared name is saved as cleared
    exported = await console_client.get("/console/segments/engaged/export.csv")
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert 'filename="segment-engaged.csv"' in exported.headers["content-disposition"]
    assert exported.text.splitlines() == ["member_id", "m2", "m3", "m4"]
    form = await console_client.get("/console/segments/engaged/edit")
    assert 'name="c0.value" type="text" value="800"' in form.text

    deleted = await console_client.post(
        "/console/segments/engaged/delete", data={"_csrf": csrf}, follow_redirects=False
    )
    assert deleted.status_code == 303 and await _segments(engine, programme) == []
    assert (await console_client.get("/console/segments/engaged")).status_code == 404


async def test_a_bad_value_is_400_next_to_its_field_and_writes_nothing(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    await login(console_client, await make_operator(engine, programme.code, "marketer"))
    csrf = await console_csrf(console_client)
    r = await console_client.post("/console/segments", data=_builder(csrf, "lots"))
    assert r.status_code == 400 and re.search(r'id="e-c0\.value">must be a whole number<', r.text)
    assert 'value="lots"' in r.text
    r = await console_client.post("/console/segments", data=_builder(csrf, **{"c1.op": "contains"}))
    assert r.status_code == 400 and 'id="e-c1.op"' in r.text
    r = await console_client.post("/console/segments", data=_builder(csrf, code="not a code!"))
    assert r.status_code == 400 and 'id="e-code"' in r.text
    r = await console_client.post("/console/segments", data=_builder(csrf, rule_json='{"not": 3}'))
    assert r.status_code == 400 and 'id="e-rule_json"' in r.text
    r = await console_client.post("/console/segments", data=_builder(csrf, code="new"))
    assert r.status_code == 400 and 'id="e-code"' in r.text
    assert await _segments(engine, programme) == []


async def test_an_analyst_reads_and_exports_but_a_forged_write_is_403(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    await _members(console_client, engine, programme)
    await login(console_client, await make_operator(engine, programme.code, "marketer"))
    csrf = await console_csrf(console_client)
    await console_client.post("/console/segments", data=_builder(csrf))
    await console_client.post("/console/logout", data={"_csrf": csrf})
    await login(console_client, await make_operator(engine, programme.code, "analyst"))
    csrf = await console_csrf(console_client)
    page = await console_client.get("/console/segments/engaged")
    assert page.status_code == 200 and "Download CSV" in page.text and "/edit" not in page.text
    assert (await console_client.get("/console/segments/engaged/export.csv")).text.splitlines() == [
        "member_id",
        "m2",
    ]
    before = await _segments(engine, programme)
    for path, data in (
        ("/console/segments", _builder(csrf, code="other")),
        ("/console/segments/engaged/edit", _builder(csrf, "0")),
        ("/console/segments/engaged/delete", {"_csrf": csrf}),
    ):
        assert (await console_client.post(path, data=data, follow_redirects=False)).status_code == 403, path
    assert (await console_client.get("/console/segments/new")).status_code == 403
    assert await _segments(engine, programme) == before


def test_the_builder_round_trips_flat_rules_and_keeps_others_as_json() -> None:
    flat = {
        "any": [
            {"fact": "tags", "op": "contains_any", "value": ["vip", "staff"]},
            {"fact": "recency_score", "op": "between", "value": [4, 5]},
        ]
    }
    match, rows, raw = rows_of(flat)
    assert (match, raw) == ("any", "") and rows[0]["value"] == "vip, staff" and rows[1]["value"] == "4, 5"
    values = {"match": match, **{f"c{i}.{k}": v for i, row in enumerate(rows) for k, v in row.items()}}
    assert rule_of(values) == flat
    nested = {"all": [{"not": {"fact": "lifecycle", "op": "==", "value": "churned"}}]}
    assert rows_of(nested)[2] and rule_of({"rule_json": rows_of(nested)[2]}) == nested

"""The console's audit log screen over HTTP: filters, pages, the CSV, and who may export."""

from __future__ import annotations

import csv
import io
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.console.helpers import login, make_operator
from tests.support import Programme


async def _changes(client: AsyncTestClient[Any], programme: Programme) -> None:
    headers = programme.headers("operator")
    r = await client.post(
        "/v1/budgets", json={"code": "welcome", "cap": 1000, "unit_cost_micros": 10_000}, headers=headers
    )
    assert r.status_code == 201, r.text
    r = await client.patch(
        "/v1/programme", json={"name": "Renamed for audit"}, headers=programme.headers("operator")
    )
    assert r.status_code == 200, r.text


async def test_the_log_lists_changes_newest_first_and_filters_them(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    await _changes(console_client, programme)
    await login(console_client, await make_operator(engine, programme.code, "analyst"))
    page = await console_client.get("/console/audit")
    assert page.status_code == 200
    assert page.text.index('data-action="programme.update"') < page.text.index('data-action="budget.create"')
    assert "Renamed for audit" in page.text
    only_budgets = await console_client.get("/console/audit", params={"action": "budget.*"})
    assert 'data-action="budget.create"' in only_budgets.text
    assert 'data-action="programme.update"' not in only_budgets.text
    by_entity = await console_client.get(
        "/console/audit", params={"entity": "budget", "entity_id": "welcome"}
    )
    assert by_entity.text.count('data-action="budget.create"') == 1
    nothing = await console_client.get(
        "/console/audit", params={"since": "2001-01-01", "until": "2001-01-02"}
    )
    assert "No changes match these filters." in nothing.text


async def test_a_bad_filter_is_shown_next_to_its_field(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    await login(console_client, await make_operator(engine, programme.code, "analyst"))
    r = await console_client.get("/console/audit", params={"since": "yesterday"})
    assert r.status_code == 400
    assert 'id="e-since"' in r.text and "YYYY-MM-DD" in r.text
    r = await console_client.get("/console/audit", params={"since": "2026-12-02", "until": "2026-12-01"})
    assert r.status_code == 400 and 'id="e-until"' in r.text
    r = await console_client.get("/console/audit", params={"actor": "nobody@example.invalid"})
    assert r.status_code == 400 and 'id="e-actor"' in r.text


async def test_an_operators_email_finds_their_changes_and_the_csv_has_the_rows(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    await _changes(console_client, programme)
    email = await make_operator(engine, programme.code, "analyst")
    await login(console_client, email)
    # The analyst changed nothing: filtering on them finds nothing.
    mine = await console_client.get("/console/audit", params={"actor": email})
    assert mine.status_code == 200 and "No changes match these filters." in mine.text
    exported = await console_client.get("/console/audit.csv", params={"action": "budget.*"})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["action"] for r in rows] == ["budget.create"]
    assert rows[0]["entity_id"] == "welcome"

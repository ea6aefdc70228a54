"""The Imports and exports screen over HTTP: uploads as multipart forms, the job's outcome on
the page, the error report, roles refused on the server, and the streamed transactions CSV."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from arq.connections import ArqRedis
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.imports import tasks
from loyalty.jobs import repository as job_runs
from tests.console.helpers import console_csrf, login, make_operator
from tests.support import Programme


async def _as(client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, role: str) -> str:
    assert (await login(client, await make_operator(engine, programme.code, role))).status_code == 303
    screen = await client.get("/console/imports")
    # Every form of the screen carries its CSRF token.
    assert screen.status_code == 200 and 'name="_csrf" value=""' not in screen.text
    return await console_csrf(client)


async def _upload(
    client: AsyncTestClient[Any], csrf: str, kind: str, body: str, budget: str | None = None
) -> Any:
    data = {"_csrf": csrf, "kind": kind, **({"budget": budget} if budget else {})}
    files = {f"file_{kind}": (f"{kind}.csv", body.encode(), "text/csv")}
    return await client.post("/console/imports", data=data, files=files, follow_redirects=False)


async def _imports(engine: AsyncEngine, programme: Programme) -> int:
    async with engine.connect() as conn:
        return int(
            await conn.scalar(
                text("SELECT count(*) FROM imports WHERE programme_id = :p"), {"p": programme.id}
            )
            or 0
        )


async def _run(engine: AsyncEngine, redis_url: str, import_id: int) -> None:
    """The worker's job itself, on the real databases."""
    redis = ArqRedis.from_url(redis_url)
    try:
        await tasks.run_import({"engine": engine, "redis": redis}, import_id)
    finally:
        await redis.aclose()


async def _members(client: AsyncTestClient[Any], programme: Programme, *ids: str) -> None:
    for member in ids:
        r = await client.post(
            "/v1/members", json={"member_id": member}, headers=programme.headers("operator")
        )
        assert r.status_code == 201, r.text


async def _budget(client: AsyncTestClient[Any], programme: Programme, code: str, cap: int) -> None:
    r = await client.post(
        "/v1/budgets",
        json={"code": code, "cap": cap, "unit_cost_micros": 1000},
        headers=programme.headers("operator"),
    )
    assert r.status_code == 201, r.text


async def test_a_members_upload_runs_and_reports_its_bad_rows(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, redis_url: str
) -> None:
    csrf = await _as(console_client, engine, programme, "marketer")
    body = "member_id,status,attributes.city\nm-1,active,Paris\nm-2,lost,Rome\n,active,Oslo\nm-4,,Kyiv\n"
    r = await _upload(console_client, csrf, "members", body)
    assert r.status_code == 303, r.text
    found = re.fullmatch(r"/console/imports/(\d+)", r.headers["location"])
    assert found
    import_id = int(found.group(1))
    queued = await console_client.get(r.headers["location"])
    assert 'data-status="queued"' in queued.text and 'hx-trigger="every 1s"' in queued.text
    await _run(engine, redis_url, import_id)
    page = await console_client.get(f"/console/imports/{import_id}", headers={"HX-Request": "true"})
    assert 'data-status="succeeded"' in page.text and "hx-trigger" not in page.text  # polling stops
    assert re.search(r'data-figure="applied">2<', page.text)
    assert re.search(r'data-figure="rejected">2<', page.text)
    report = await console_client.get(f"/console/imports/{import_id}/errors.csv")
    assert report.status_code == 200 and "attachment" in report.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(report.text)))
    assert [(r["line"], r["error_field"]) for r in rows] == [("3", "status"), ("4", "member_id")]
    listing = await console_client.get("/console/imports")
    assert f'data-import="{import_id}"' in listing.text and "members.csv" in listing.text


async def test_points_upload_grants_once_even_when_sent_twice(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, redis_url: str
) -> None:
    csrf = await _as(console_client, engine, programme, "admin")
    await _budget(console_client, programme, "promo", 10_000)
    await _members(console_client, programme, "a", "b")
    body = "member_id,points,reference\na,100,r-1\nb,200,r-2\n"
    ids = []
    for _ in range(2):
        r = await _upload(console_client, csrf, "points", body, budget="promo")
        assert r.status_code == 303, r.text
        ids.append(int(r.headers["location"].rsplit("/", 1)[1]))
        await _run(engine, redis_url, ids[-1])
    first, second = [await console_client.get(f"/console/imports/{i}") for i in ids]
    assert re.search(r'data-figure="applied">2<', first.text)
    assert re.search(r'data-figure="unchanged">2<', second.text)
    budget = (await console_client.get("/v1/budgets/promo", headers=programme.headers("operator"))).json()
    assert budget["issued"] == 300


async def test_lower_roles_are_refused_and_bad_files_store_nothing(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    csrf = await _as(console_client, engine, programme, "support")
    r = await _upload(console_client, csrf, "members", "member_id\nx\n")
    assert r.status_code == 403
    page = await console_client.get("/console/imports")
    assert page.status_code == 200 and 'id="form-members"' not in page.text  # no upload form shown
    assert await _imports(engine, programme) == 0

    csrf = await _as(console_client, engine, programme, "marketer")
    await _budget(console_client, programme, "real", 100)
    r = await _upload(console_client, csrf, "members", "member_id,colour\nx,red\n")
    assert r.status_code == 400
    assert 'id="e-file_members"' in r.text and "colour: unknown column" in r.text
    r = await _upload(console_client, csrf, "points", "member_id,points,reference\nx,1,r\n", budget="nope")
    assert r.status_code == 400 and 'id="e-budget"' in r.text
    assert await _imports(engine, programme) == 0


async def test_the_transactions_export_streams_the_period(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    await _as(console_client, engine, programme, "analyst")
    await _budget(console_client, programme, "base", 10_000)
    await _members(console_client, programme, "e-1", "e-2")
    for member, points in (("e-1", 10), ("e-2", 20)):
        r = await console_client.post(
            "/v1/earn",
            json={"member_id": member, "points": points, "budget": "base", "reference": f"o-{member}"},
            headers=programme.headers("operator"),
        )
        assert r.status_code in (200, 201), r.text
    r = await console_client.get("/console/exports/transactions.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    earned = sorted((row["member_id"], row["kind"]) for row in rows if row["kind"] == "earn")
    assert earned == [("e-1", "earn"), ("e-2", "earn")]
    assert {row["kind"] for row in rows} == {"earn", "budget_allocation"}
    bad = await console_client.get("/console/exports/transactions.csv?since=2026-13-01")
    assert bad.status_code == 400 and 'id="e-since"' in bad.text


async def test_a_failed_import_resumes_where_it_stopped(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, redis_url: str
) -> None:
    csrf = await _as(console_client, engine, programme, "admin")
    body = "member_id\n" + "".join(f"r-{n}\n" for n in range(1200))
    r = await _upload(console_client, csrf, "members", body)
    import_id = int(r.headers["location"].rsplit("/", 1)[1])
    await tasks.apply_import(engine, import_id, batch=500, max_batches=1)  # stopped after one batch
    async with engine.begin() as conn:
        job_id = await conn.scalar(text("SELECT job_id FROM imports WHERE id = :i"), {"i": import_id})
        await job_runs.record_finished(conn, job_id=job_id, status="failed", result=None, error="worker lost")
    page = await console_client.get(f"/console/imports/{import_id}")
    assert 'data-status="failed"' in page.text and "worker lost" in page.text and ">Resume<" in page.text
    support = await _as(console_client, engine, programme, "support")
    refused = await console_client.post(f"/console/imports/{import_id}/resume", data={"_csrf": support})
    assert refused.status_code == 403
    csrf = await _as(console_client, engine, programme, "admin")
    r = await console_client.post(
        f"/console/imports/{import_id}/resume", data={"_csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303
    assert 'data-status="queued"' in (await console_client.get(f"/console/imports/{import_id}")).text
    await _run(engine, redis_url, import_id)
    done = await console_client.get(f"/console/imports/{import_id}")
    assert 'data-status="succeeded"' in done.text and re.search(r'data-figure="applied">1200<', done.text)
    again = await console_client.post(f"/console/imports/{import_id}/resume", data={"_csrf": csrf})
    assert again.status_code == 409  # a finished import is not run again

"""CSV imports through the API: the upload is stored and queued (202), the job applies it in
batches, progress reaches 100%, the error report lists exactly the refused rows with the API's
reasons, a retried upload grants nothing twice and a job stopped half-way resumes without
applying any row twice. The job is the arq function itself, run here on the real databases."""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Any

import pytest
from arq.connections import ArqRedis
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.app import create_app
from loyalty.http.edge import MAX_BODY
from loyalty.imports import repository, tasks
from loyalty.ledger.verify import verify
from loyalty.settings import Settings
from tests.api.helpers import Api, problem


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


async def upload(
    api: Api, kind: str, body: str | bytes, *, budget: str | None = None, content_type: str = "text/csv"
) -> Any:
    params = {"budget": budget} if budget else {}
    return await api.client.post(
        f"/v1/imports/{kind}",
        content=body.encode() if isinstance(body, str) else body,
        params=params,
        headers={**api.headers(), "Content-Type": content_type},
    )


async def queued(api: Api, kind: str, body: str, *, budget: str | None = None) -> int:
    r = await upload(api, kind, body, budget=budget)
    assert r.status_code == 202, r.text
    import_id: int = r.json()["id"]
    assert r.headers["location"] == f"/v1/imports/{import_id}"
    return import_id


async def run(engine: AsyncEngine, redis_url: str, import_id: int) -> dict[str, Any]:
    redis = ArqRedis.from_url(redis_url)
    try:
        return await tasks.run_import({"engine": engine, "redis": redis}, import_id)
    finally:
        await redis.aclose()


def report(body: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body)))


async def test_5000_members_with_bad_rows(api: Api, engine: AsyncEngine, redis_url: str) -> None:
    header = ["member_id", "status", "attributes.city", "tags", "attributes"]
    rows: list[list[Any]] = []
    bad: dict[int, str] = {}  # line -> the field the report must name
    for i in range(5000):
        rows.append([f"m-{i:05d}", "", f"city-{i % 7}", "vip;news", ""])
    for index, (cells, field) in {
        10: (["", "", "x", "", ""], "member_id"),
        777: (["m-x1", "frozen", "", "", ""], "status"),
        1500: (["m-x2", "", "", "", "{not json"], "attributes"),
        2500: (["m-x3", "active"], "row"),
        4999: (["m" * 129, "", "", "", ""], "member_id"),
    }.items():
        rows[index] = cells
        bad[index + 2] = field  # line 1 is the header
    import_id = await queued(api, "members", csv_text(header, rows))

    before = (await api.get(f"/v1/imports/{import_id}")).json()
    assert before["status"] == "queued" and before["kind"] == "members"
    assert (before["rows_total"], before["rows_done"], before["progress_percent"]) == (5000, 0, 0)

    result = await run(engine, redis_url, import_id)
    assert result["finished"] is True
    done = (await api.get(f"/v1/imports/{import_id}")).json()
    assert done["status"] == "succeeded", done
    assert done["progress_percent"] == 100
    assert (done["rows_done"], done["applied"], done["rejected"]) == (5000, 5000 - len(bad), len(bad))
    job = (await api.get(f"/v1/jobs/{done['job_id']}")).json()
    assert job["status"] == "succeeded" and job["result"]["applied"] == 5000 - len(bad)

    r = await api.client.get(f"/v1/imports/{import_id}/errors.csv", headers=api.headers())
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    errors = report(r.text)
    assert {int(e["line"]): e["error_field"] for e in errors} == bad
    reasons = {int(e["line"]): e["error_reason"] for e in errors}
    assert reasons[12] == "is required"
    assert reasons[2502] == "has 2 fields; the header has 5"
    assert "128" in reasons[5001]
    # The report keeps the row as uploaded, under the file's own header.
    assert errors[1]["member_id"] == "m-x1" and errors[1]["status"] == "frozen"

    member = (await api.get("/v1/members/m-00003")).json()
    assert member["attributes"] == {"city": "city-3", "tags": ["news", "vip"]}
    async with engine.connect() as conn:
        count = await conn.scalar(
            text("SELECT count(*) FROM members WHERE programme_id = :p"), {"p": api.programme.id}
        )
    assert count == 5000 - len(bad)


async def test_members_rows_update_and_merge(api: Api, engine: AsyncEngine, redis_url: str) -> None:
    await api.enrol("m-1", {"city": "Paris", "plan": "gold"})
    body = csv_text(
        ["member_id", "status", "attributes"],
        [["m-1", "suspended", '{"city": "Lyon", "plan": null}'], ["m-2", "", '{"city": "Nice"}']],
    )
    first = await queued(api, "members", body)
    await run(engine, redis_url, first)
    assert (await api.get("/v1/members/m-1")).json()["attributes"] == {"city": "Lyon"}
    assert (await api.get("/v1/members/m-1")).json()["status"] == "suspended"
    assert (await api.get("/v1/members/m-2")).json()["attributes"] == {"city": "Nice"}
    # The same file again changes nothing.
    second = await queued(api, "members", body)
    await run(engine, redis_url, second)
    again = (await api.get(f"/v1/imports/{second}")).json()
    assert (again["applied"], again["unchanged"], again["rejected"]) == (0, 2, 0)


async def test_header_is_checked_before_anything_is_stored(api: Api) -> None:
    r = await upload(api, "members", "member_id,colour,size\nm-1,red,9\n")
    body = problem(r, 400, "invalid_input")
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"header.colour", "header.size"}
    r = await upload(api, "points", "member_id,points\nm-1,5\n", budget="base")
    assert r.status_code in (400, 404)
    await api.budget("base")
    body = problem(await upload(api, "points", "member_id,points\nm-1,5\n", budget="base"), 400)
    assert {e["field"] for e in body["errors"]} == {"header.reference"}
    assert "missing" in body["errors"][0]["reason"]
    problem(await upload(api, "members", ""), 400, "invalid_input")
    problem(await upload(api, "members", "member_id\n", content_type="application/json"), 415)
    problem(
        await upload(api, "points", "member_id,points,reference\n", budget="nope"), 404, "budget_not_found"
    )
    problem(await upload(api, "members", b"member_id\n\xff\xfe\n"), 400, "invalid_input")
    r = await api.client.post(
        "/v1/imports/members",
        content=b"member_id\nm-1\n",
        headers={**api.headers("crm"), "Content-Type": "text/csv"},
    )
    problem(r, 403)
    page = (await api.get("/v1/imports")).json()
    assert page["items"] == []


async def test_import_of_another_programme_is_not_found(api: Api, other: Api) -> None:
    import_id = await queued(api, "members", "member_id\nm-1\n")
    problem(
        await other.client.get(f"/v1/imports/{import_id}", headers=other.headers()), 404, "import_not_found"
    )
    r = await other.client.get(f"/v1/imports/{import_id}/errors.csv", headers=other.headers())
    problem(r, 404, "import_not_found")


async def _balances(api: Api, members: list[str]) -> dict[str, int]:
    return {m: (await api.balance(m))["available"] for m in members}


async def test_retried_points_upload_grants_nothing_twice(
    api: Api, engine: AsyncEngine, redis_url: str
) -> None:
    await api.budget("base", cap=1_000_000)
    members = [f"m-{i}" for i in range(20)]
    for m in members:
        await api.enrol(m)
    rows = [[m, 10 + i, f"order-{i}", "welcome"] for i, m in enumerate(members)]
    rows.append(["m-0", 5, "order-0", "welcome"])  # the same reference twice in one file
    rows.append(["ghost", 5, "order-x", ""])
    rows.append(["m-1", "12.5", "order-y", ""])
    body = csv_text(["member_id", "points", "reference", "reason"], rows)
    first = await queued(api, "points", body, budget="base")
    await run(engine, redis_url, first)
    view = (await api.get(f"/v1/imports/{first}")).json()
    assert (view["applied"], view["unchanged"], view["rejected"]) == (20, 0, 3)
    errors = {
        int(e["line"]): e
        for e in report((await api.client.get(f"/v1/imports/{first}/errors.csv", headers=api.headers())).text)
    }
    assert (
        errors[22]["error_field"] == "reference" and errors[22]["error_reason"] == "appears on line 2 already"
    )
    assert (
        errors[23]["error_field"] == "member_id"
        and errors[23]["error_reason"] == "No member with this id in the programme."
    )
    assert errors[24]["error_field"] == "points"
    expected = {m: 10 + i for i, m in enumerate(members)}
    assert await _balances(api, members) == expected

    # The same file again, and the same rows in another order: nothing is granted twice.
    second = await queued(api, "points", body, budget="base")
    await run(engine, redis_url, second)
    shuffled = csv_text(["member_id", "points", "reference", "reason"], list(reversed(rows[:20])))
    third = await queued(api, "points", shuffled, budget="base")
    await run(engine, redis_url, third)
    for import_id in (second, third):
        view = (await api.get(f"/v1/imports/{import_id}")).json()
        assert view["applied"] == 0 and view["unchanged"] == 20, view
    assert await _balances(api, members) == expected
    # The same reference with another amount is refused, not granted.
    changed = await queued(
        api, "points", csv_text(["member_id", "points", "reference"], [["m-3", 99, "order-3"]]), budget="base"
    )
    await run(engine, redis_url, changed)
    view = (await api.get(f"/v1/imports/{changed}")).json()
    assert view["rejected"] == 1
    async with engine.connect() as conn:
        assert await verify(conn, api.programme.id) == []
        earns = await conn.scalar(
            text("SELECT count(*) FROM transactions WHERE programme_id = :p AND kind = 'earn'"),
            {"p": api.programme.id},
        )
    assert earns == 20
    assert (await api.get("/v1/budgets/base")).json()["issued"] == sum(expected.values())


async def test_budget_cap_rejects_rows_that_exceed_it(api: Api, engine: AsyncEngine, redis_url: str) -> None:
    await api.budget("small", cap=1000)
    for m in ("a", "b", "c", "d", "e"):
        await api.enrol(m)
    rows = [[m, 300, f"r-{m}"] for m in ("a", "b", "c", "d")] + [["e", 100, "r-e"]]
    import_id = await queued(
        api, "points", csv_text(["member_id", "points", "reference"], rows), budget="small"
    )
    await run(engine, redis_url, import_id)
    view = (await api.get(f"/v1/imports/{import_id}")).json()
    assert (view["applied"], view["rejected"]) == (4, 1)
    (error,) = report(
        (await api.client.get(f"/v1/imports/{import_id}/errors.csv", headers=api.headers())).text
    )
    assert (error["line"], error["error_field"], error["error_code"]) == ("5", "points", "budget_exhausted")
    assert error["error_reason"] == "The budget has not enough points left."
    assert (await api.balance("e"))["available"] == 100  # the rows after the refused one go on
    async with engine.connect() as conn:
        assert await verify(conn, api.programme.id) == []


async def test_a_job_stopped_mid_way_resumes_and_applies_each_row_once(
    api: Api, engine: AsyncEngine, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.budget("base", cap=1_000_000)
    members = [f"m-{i}" for i in range(30)]
    for m in members:
        await api.enrol(m)
    rows = [[members[i % 30], 1 + i % 5, f"ref-{i}"] for i in range(1000)]
    import_id = await queued(
        api, "points", csv_text(["member_id", "points", "reference"], rows), budget="base"
    )

    # Two batches commit, then the worker stops.
    partial = await tasks.apply_import(engine, import_id, batch=100, max_batches=2)
    assert partial.finished is False and partial.rows_done == 200
    assert (await api.get(f"/v1/imports/{import_id}")).json()["progress_percent"] == 20

    # The next run crashes inside its second batch (rows 701-1000), after the ledger wrote that
    # batch's grants: the batch rolls back whole, the one before it (rows 201-700) stays.
    real = repository.record_outcomes
    calls = 0

    async def crash_on_second(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("worker killed")
        await real(*args, **kwargs)

    monkeypatch.setattr(repository, "record_outcomes", crash_on_second)
    with pytest.raises(RuntimeError):
        await run(engine, redis_url, import_id)
    failed = (await api.get(f"/v1/imports/{import_id}")).json()
    assert failed["status"] == "failed" and "worker killed" in failed["error"]
    assert failed["rows_done"] == 200 + tasks.BATCH
    async with engine.connect() as conn:
        earned = await conn.scalar(
            text("SELECT count(*) FROM transactions WHERE programme_id = :p AND kind = 'earn'"),
            {"p": api.programme.id},
        )
    assert earned == 200 + tasks.BATCH
    monkeypatch.setattr(repository, "record_outcomes", real)

    resumed = await api.post(f"/v1/imports/{import_id}/resume", {}, expect=202)
    assert resumed.json()["status"] == "queued"
    await run(engine, redis_url, import_id)
    done = (await api.get(f"/v1/imports/{import_id}")).json()
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert (done["rows_done"], done["applied"], done["unchanged"], done["rejected"]) == (1000, 1000, 0, 0)
    async with engine.connect() as conn:
        per_reference = await conn.execute(
            text(
                "SELECT reference, count(*) AS n FROM transactions WHERE programme_id = :p AND kind = 'earn' "
                "GROUP BY reference HAVING count(*) <> 1"
            ),
            {"p": api.programme.id},
        )
        assert per_reference.all() == []
        earns = await conn.scalar(
            text("SELECT count(*) FROM transactions WHERE programme_id = :p AND kind = 'earn'"),
            {"p": api.programme.id},
        )
        assert await verify(conn, api.programme.id) == []
    assert earns == 1000
    total = sum(1 + i % 5 for i in range(1000))
    assert sum((await _balances(api, members)).values()) == total
    problem(await api.post(f"/v1/imports/{import_id}/resume", {}, expect=None), 409, "import_finished")


async def test_import_routes_have_their_own_body_limit(api: Api, settings: Settings) -> None:
    # Over the 1 MiB limit of every other route, well within the import limit.
    big = csv_text(["member_id", "attributes.note"], [[f"n-{i}", "x" * 400] for i in range(3000)])
    assert len(big) > MAX_BODY
    r = await upload(api, "members", big)
    assert r.status_code == 202, r.text
    assert r.json()["rows_total"] == 3000
    problem(
        await api.client.post(
            "/v1/earn",
            content=b"{" + b" " * MAX_BODY + b"}",
            headers={**api.headers("ecommerce"), "Content-Type": "application/json"},
        ),
        413,
    )

    small = create_app(dataclasses.replace(settings, import_max_bytes=2000))
    async with AsyncTestClient(app=small) as client:
        limited = Api(client, api.programme)
        problem(
            await upload(limited, "members", csv_text(["member_id"], [[f"m-{i:08d}"] for i in range(300)])),
            413,
        )
        assert (await upload(limited, "members", "member_id\nm-1\n")).status_code == 202

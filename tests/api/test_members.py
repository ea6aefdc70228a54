"""Members: enrol, read, list with a cursor, patch attributes and status; member tokens and /v1/me."""

from __future__ import annotations

from tests.api.helpers import Api, problem


async def test_enrol_and_get(api: Api) -> None:
    view = await api.enrol("alice", {"tier": "silver", "city": "Lyon"})
    assert view["member_id"] == "alice"
    assert view["status"] == "active"
    assert view["attributes"] == {"tier": "silver", "city": "Lyon"}
    got = (await api.get("/v1/members/alice", role="marketing")).json()
    assert got == view
    assert await api.balance("alice") == {"available": 0, "pending": 0, "held": 0, "expiring_soon": 0}


async def test_enrol_twice_is_a_conflict(api: Api) -> None:
    await api.enrol("alice")
    r = await api.post("/v1/members", {"member_id": "alice"}, role="crm", expect=None)
    problem(r, 409, "member_exists")


async def test_get_unknown_member_is_404(api: Api) -> None:
    problem(await api.get("/v1/members/nobody", expect=None), 404, "member_not_found")


async def test_list_pages_neither_repeat_nor_skip(api: Api) -> None:
    ids = [f"m{i:02d}" for i in range(7)]
    for member_id in reversed(ids):
        await api.enrol(member_id)
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": 3} if cursor is None else {"limit": 3, "cursor": cursor}
        page = (await api.get("/v1/members", params=params, role="crm")).json()
        pages += 1
        assert len(page["items"]) <= 3
        seen += [m["member_id"] for m in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert pages == 3


async def test_list_limit_exactly_the_rest_has_no_next_cursor(api: Api) -> None:
    for member_id in ("a", "b"):
        await api.enrol(member_id)
    page = (await api.get("/v1/members", params={"limit": 2})).json()
    assert [m["member_id"] for m in page["items"]] == ["a", "b"]
    assert page["next_cursor"] is None


async def test_list_with_garbage_cursor_is_400(api: Api) -> None:
    await api.enrol("a")
    body = problem(await api.get("/v1/members", params={"cursor": "!!!"}, expect=None), 400)
    assert "cursor" in body["detail"]


async def test_patch_merges_attributes_and_null_removes_a_key(api: Api) -> None:
    await api.enrol("alice", {"tier": "silver", "city": "Lyon"})
    r = await api.patch(
        "/v1/members/alice", {"attributes": {"tier": "gold", "city": None, "vip": True}}, role="crm"
    )
    assert r.json()["attributes"] == {"tier": "gold", "vip": True}
    got = (await api.get("/v1/members/alice")).json()
    assert got["attributes"] == {"tier": "gold", "vip": True}
    assert got["updated_at"] >= got["enrolled_at"]


async def test_patch_keeps_nested_nulls_of_other_attributes(api: Api) -> None:
    await api.enrol("alice", {"profile": {"middle_name": None, "first": "A"}})
    r = await api.patch("/v1/members/alice", {"attributes": {"tier": "gold"}}, role="crm")
    assert r.json()["attributes"] == {"profile": {"middle_name": None, "first": "A"}, "tier": "gold"}


async def test_patch_status(api: Api) -> None:
    await api.enrol("alice")
    r = await api.patch("/v1/members/alice", {"status": "suspended"}, role="ecommerce")
    assert r.json()["status"] == "suspended"
    assert (await api.get("/v1/members/alice")).json()["status"] == "suspended"
    body = problem(await api.patch("/v1/members/alice", {"status": "gone"}, expect=None), 400)
    assert body["errors"][0]["field"] == "status"


async def test_patch_unknown_member_is_404(api: Api) -> None:
    problem(await api.patch("/v1/members/nobody", {"status": "closed"}, expect=None), 404, "member_not_found")


async def test_marketing_cannot_enrol_or_patch(api: Api) -> None:
    r = await api.post("/v1/members", {"member_id": "x"}, role="marketing", expect=None)
    problem(r, 403, "role_not_allowed")
    await api.enrol("alice")
    r = await api.patch("/v1/members/alice", {"status": "closed"}, role="marketing", expect=None)
    problem(r, 403, "role_not_allowed")


async def _token(api: Api, member_id: str, role: str = "ecommerce", **fields: object) -> str:
    r = await api.post("/v1/member-tokens", {"member_id": member_id, **fields}, role=role)
    body = r.json()
    assert body["member_id"] == member_id
    return str(body["token"])


async def test_member_token_reads_me(api: Api) -> None:
    await api.budget()
    await api.enrol("alice", {"tier": "gold"})
    await api.earn("alice", 100, expiry={"days": 10})
    await api.earn("alice", 50, pending_days=14)
    await api.spend("alice", 30)
    token = await _token(api, "alice", role="crm", ttl_seconds=600)
    auth = {"Authorization": f"Bearer {token}"}

    me = (await api.client.get("/v1/me", headers=auth)).json()
    assert me["member_id"] == "alice" and me["attributes"] == {"tier": "gold"}
    balance = (await api.client.get("/v1/me/balance", headers=auth)).json()
    assert balance == {"available": 70, "pending": 50, "held": 0, "expiring_soon": 70}
    expiring = (await api.client.get("/v1/me/expiring", params={"days": 30}, headers=auth)).json()
    assert expiring["member_id"] == "alice" and expiring["total"] == 70 and len(expiring["items"]) == 1
    history = (await api.client.get("/v1/me/transactions", params={"limit": 2}, headers=auth)).json()
    assert [t["kind"] for t in history["items"]] == ["spend", "earn"]
    assert history["next_cursor"] is not None
    rest = (
        await api.client.get("/v1/me/transactions", params={"cursor": history["next_cursor"]}, headers=auth)
    ).json()
    assert [t["kind"] for t in rest["items"]] == ["earn"] and rest["next_cursor"] is None
    spends = (await api.client.get("/v1/me/transactions", params={"kind": "spend"}, headers=auth)).json()
    assert [t["amount"] for t in spends["items"]] == [-30]


async def test_member_token_for_unknown_member_is_404(api: Api) -> None:
    r = await api.post("/v1/member-tokens", {"member_id": "nobody"}, role="ecommerce", expect=None)
    problem(r, 404, "member_not_found")


async def test_operator_and_marketing_cannot_issue_member_tokens(api: Api) -> None:
    await api.enrol("alice")
    for role in ("operator", "marketing"):
        r = await api.post("/v1/member-tokens", {"member_id": "alice"}, role=role, expect=None)
        problem(r, 403, "role_not_allowed")


async def test_member_token_ttl_bounds(api: Api) -> None:
    await api.enrol("alice")
    for ttl in (59, 86_401):
        r = await api.post(
            "/v1/member-tokens", {"member_id": "alice", "ttl_seconds": ttl}, expect=None, role="crm"
        )
        assert problem(r, 400)["errors"][0]["field"] == "ttl_seconds"


async def test_a_suspended_member_cannot_earn_or_spend_until_reactivated(api: Api) -> None:
    await api.budget()
    await api.member_with("alice", 50)
    await api.patch("/v1/members/alice", {"status": "suspended"}, role="crm")
    for path, body in (
        ("/v1/earn", {"member_id": "alice", "budget": "base", "points": 5}),
        ("/v1/spend", {"member_id": "alice", "points": 5}),
        ("/v1/holds", {"member_id": "alice", "points": 5}),
    ):
        body_ = problem(await api.post(path, body, role="ecommerce", expect=None), 422, "member_not_active")
        assert body_["member_status"] == "suspended"
    assert (await api.balance("alice"))["available"] == 50
    await api.patch("/v1/members/alice", {"status": "active"}, role="crm")
    assert (await api.spend("alice", 5))["balance"]["available"] == 45

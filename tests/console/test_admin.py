"""The Administration screen over HTTP: API keys (the secret shown once, revocation), operators
(roles, removal, the last admin kept), invitations accepted on the public page, programme
settings; every write refused to a marketer on the server."""

from __future__ import annotations

import re
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.console.helpers import PASSWORD, console_csrf, csrf_of, login, make_operator
from tests.support import Programme, make_programme

KEY = re.compile(r"<code data-secret>(lk_[^<]+)</code>")
LINK = re.compile(r"<code data-invite-link>[^<]*(/console/invite/[^<]+)</code>")


async def _as(client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, role: str) -> str:
    assert (await login(client, await make_operator(engine, programme.code, role))).status_code == 303
    screen = await client.get("/console/admin/operators")
    # Every form of the screen carries its CSRF token.
    assert screen.status_code == 200 and 'name="_csrf" value=""' not in screen.text
    return await console_csrf(client)


async def _operator_id(engine: AsyncEngine, email: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text("SELECT id FROM operators WHERE email = :e"), {"e": email}) or 0)


async def _role(engine: AsyncEngine, programme: Programme, email: str) -> str | None:
    async with engine.connect() as conn:
        return await conn.scalar(
            text(
                "SELECT op.role FROM operator_programmes op JOIN operators o ON o.id = op.operator_id"
                " WHERE o.email = :e AND op.programme_id = :p"
            ),
            {"e": email, "p": programme.id},
        )


async def test_a_key_is_shown_once_works_and_stops_when_revoked(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    csrf = await _as(console_client, engine, programme, "admin")
    r = await console_client.post(
        "/console/admin/keys", data={"_csrf": csrf, "name": "shop", "role": "ecommerce"}
    )
    assert r.status_code == 200, r.text
    found = KEY.search(r.text)
    assert found
    key = found.group(1)
    assert key not in (await console_client.get("/console/admin/keys")).text
    balance = await console_client.get("/v1/programme", headers={"Authorization": f"Bearer {key}"})
    assert balance.status_code == 200
    async with engine.connect() as conn:
        key_id = await conn.scalar(
            text("SELECT id FROM api_keys WHERE programme_id = :p AND name = 'shop'"), {"p": programme.id}
        )
    r = await console_client.post(
        f"/console/admin/keys/{key_id}/revoke", data={"_csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303
    refused = await console_client.get("/v1/programme", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401
    bad = await console_client.post("/console/admin/keys", data={"_csrf": csrf, "role": "root"})
    assert bad.status_code == 400 and 'id="e-role"' in bad.text


async def test_roles_change_and_the_last_admin_stays(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    analyst = await make_operator(engine, programme.code, "analyst")
    csrf = await _as(console_client, engine, programme, "admin")
    page = await console_client.get("/console/admin/operators")
    assert f'data-operator="{analyst}"' in page.text
    analyst_id = await _operator_id(engine, analyst)
    r = await console_client.post(
        f"/console/admin/operators/{analyst_id}/role",
        data={"_csrf": csrf, "role": "support"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and await _role(engine, programme, analyst) == "support"
    me = re.search(r'data-operator="([^"]+)">\s*<td>[^<]*\(you\)', page.text)
    assert me
    my_id = await _operator_id(engine, me.group(1))
    r = await console_client.post(
        f"/console/admin/operators/{my_id}/role", data={"_csrf": csrf, "role": "analyst"}
    )
    assert r.status_code == 409 and "last admin" in r.text
    assert await _role(engine, programme, me.group(1)) == "admin"
    r = await console_client.post(
        f"/console/admin/operators/{analyst_id}/remove", data={"_csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303 and await _role(engine, programme, analyst) is None
    async with engine.connect() as conn:
        trail = (
            await conn.execute(
                text(
                    "SELECT action, before, after, operator_id FROM audit_log"
                    " WHERE programme_id = :p AND entity_type = 'operator' AND action <> 'operator.create' ORDER BY id"
                ),
                {"p": programme.id},
            )
        ).all()
    assert [(t.action, t.before, t.after, t.operator_id) for t in trail] == [
        ("operator.role", {"role": "analyst"}, {"role": "support"}, my_id),
        ("operator.remove", {"role": "support"}, None, my_id),
    ]  # the refused demotion left no row


async def test_an_invitation_is_accepted_once_and_the_invitee_logs_in(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, app: Any
) -> None:
    csrf = await _as(console_client, engine, programme, "admin")
    bad = await console_client.post(
        "/console/admin/invitations", data={"_csrf": csrf, "email": "nobody", "role": "support"}
    )
    assert bad.status_code == 400 and 'id="e-email"' in bad.text
    email = f"new-{programme.code}@example.invalid"
    r = await console_client.post(
        "/console/admin/invitations", data={"_csrf": csrf, "email": email, "role": "support"}
    )
    found = LINK.search(r.text)
    assert found
    link = found.group(1)
    async with AsyncTestClient(app=app) as invitee:
        form = await invitee.get(link)
        assert form.status_code == 200 and "support" in form.text
        token = csrf_of(form.text)
        short = await invitee.post(link, data={"_csrf": token, "password": "short", "confirm": "short"})
        assert short.status_code == 400 and 'id="e-password"' in short.text
        assert await _role(engine, programme, email) is None
        no_csrf = await invitee.post(
            link, data={"password": "long enough password", "confirm": "long enough password"}
        )
        assert no_csrf.status_code == 403
        done = await invitee.post(
            link, data={"_csrf": token, "password": "long enough password", "confirm": "long enough password"}
        )
        assert done.status_code == 200 and "is ready" in done.text
        assert await _role(engine, programme, email) == "support"
        again = await invitee.get(link)
        assert again.status_code == 404  # once only
        assert (await login(invitee, email, "long enough password")).status_code == 303
        assert email in (await invitee.get("/console")).text


async def test_settings_are_saved_and_checked(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    csrf = await _as(console_client, engine, programme, "admin")
    form = {"_csrf": csrf, "name": "Renamed", "timezone": "Asia/Shanghai", "clawback_policy": "clamp"}
    r = await console_client.post("/console/admin/settings", data=form, follow_redirects=False)
    assert r.status_code == 303
    view = (await console_client.get("/v1/programme", headers=programme.headers("operator"))).json()
    assert (view["name"], view["timezone"], view["clawback_policy"], view["allow_transfers"]) == (
        "Renamed", "Asia/Shanghai", "clamp", False,
    )  # fmt: skip
    r = await console_client.post("/console/admin/settings", data={**form, "timezone": "Mars/Olympus"})
    assert r.status_code == 400 and 'id="e-timezone"' in r.text
    view = (await console_client.get("/v1/programme", headers=programme.headers("operator"))).json()
    assert view["timezone"] == "Asia/Shanghai"


async def test_a_marketer_is_refused_every_admin_write(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    other = await make_operator(engine, programme.code, "analyst")
    other_id = await _operator_id(engine, other)
    csrf = await _as(console_client, engine, programme, "marketer")
    page = await console_client.get("/console/admin/keys")
    assert page.status_code == 200 and 'id="form-key"' not in page.text
    for path, data in (
        ("/console/admin/keys", {"role": "operator", "name": "x"}),
        ("/console/admin/keys/1/revoke", {}),
        (f"/console/admin/operators/{other_id}/role", {"role": "admin"}),
        (f"/console/admin/operators/{other_id}/remove", {}),
        ("/console/admin/invitations", {"email": "x@example.invalid", "role": "admin"}),
        ("/console/admin/settings", {"name": "x"}),
    ):
        r = await console_client.post(path, data={"_csrf": csrf, **data}, follow_redirects=False)
        assert r.status_code == 403, path
    assert await _role(engine, programme, other) == "analyst"
    async with engine.connect() as conn:
        keys = await conn.scalar(
            text("SELECT count(*) FROM api_keys WHERE programme_id = :p"), {"p": programme.id}
        )
        invites = await conn.scalar(
            text("SELECT count(*) FROM operator_invitations WHERE programme_id = :p"), {"p": programme.id}
        )
    assert (keys, invites) == (4, 0)


async def test_an_existing_account_accepts_with_its_own_password(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, app: Any
) -> None:
    elsewhere = await make_programme(engine)
    email = await make_operator(engine, elsewhere.code, "admin")
    csrf = await _as(console_client, engine, programme, "admin")
    r = await console_client.post(
        "/console/admin/invitations", data={"_csrf": csrf, "email": email, "role": "analyst"}
    )
    found = LINK.search(r.text)
    assert found
    link = found.group(1)
    async with AsyncTestClient(app=app) as invitee:
        form = await invitee.get(link)
        assert "You have an account already" in form.text
        token = csrf_of(form.text)
        wrong = await invitee.post(link, data={"_csrf": token, "password": "not my password at all"})
        assert wrong.status_code == 400 and 'id="e-password"' in wrong.text
        assert await _role(engine, programme, email) is None
        done = await invitee.post(link, data={"_csrf": token, "password": PASSWORD})
        assert done.status_code == 200 and await _role(engine, programme, email) == "analyst"
    # Inviting someone who works here already is refused next to the email.
    r = await console_client.post(
        "/console/admin/invitations", data={"_csrf": csrf, "email": email, "role": "admin"}
    )
    assert r.status_code == 409 and 'id="e-email"' in r.text


async def test_an_open_invitation_can_be_cancelled(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    csrf = await _as(console_client, engine, programme, "admin")
    email = f"c-{programme.code}@example.invalid"
    r = await console_client.post(
        "/console/admin/invitations", data={"_csrf": csrf, "email": email, "role": "support"}
    )
    found = LINK.search(r.text)
    assert found and f'data-invitation="{email}"' in r.text
    async with engine.connect() as conn:
        invitation_id = await conn.scalar(
            text("SELECT id FROM operator_invitations WHERE email = :e"), {"e": email}
        )
    r = await console_client.post(
        f"/console/admin/invitations/{invitation_id}/cancel", data={"_csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303
    assert (await console_client.get(found.group(1))).status_code == 404

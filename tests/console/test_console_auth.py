"""The console's sessions, CSRF, lockout, roles and programme switch, over HTTP."""

from __future__ import annotations

from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.console.helpers import PASSWORD, console_csrf, login, make_operator
from tests.support import Programme, make_programme


async def test_pages_need_a_session(console_client: AsyncTestClient[Any]) -> None:
    r = await console_client.get("/console/", follow_redirects=False)
    assert r.status_code in (303, 307, 308) or r.status_code == 303
    r = await console_client.get("/console", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login?next=%2Fconsole"
    login_page = await console_client.get("/console/login")
    assert login_page.status_code == 200
    assert 'name="email"' in login_page.text and 'name="password"' in login_page.text


async def test_login_sets_a_hardened_session_cookie_and_logout_ends_it(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    email = await make_operator(engine, programme.code, "analyst")
    r = await login(console_client, email)
    assert r.status_code == 303 and r.headers["location"] == "/console"
    cookie = next(
        v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("loyalty_console=")
    )
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # plain http here; behind https (LOYALTY_HTTPS) it is Secure
    page = await console_client.get("/console")
    assert page.status_code == 200 and email in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    token = await console_csrf(console_client)
    out = await console_client.post("/console/logout", data={"_csrf": token}, follow_redirects=False)
    assert out.status_code == 303
    assert (await console_client.get("/console", follow_redirects=False)).status_code == 303
    async with engine.connect() as conn:
        left = await conn.scalar(
            text(
                "SELECT count(*) FROM console_sessions s JOIN operators o ON o.id = s.operator_id"
                " WHERE o.email = :e"
            ),
            {"e": email},
        )
    assert left == 0


async def test_a_wrong_password_is_refused_without_saying_which_part(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    email = await make_operator(engine, programme.code, "analyst")
    wrong = await login(console_client, email, "not the password at all")
    unknown = await login(console_client, "nobody-here@example.invalid", "not the password at all")
    assert wrong.status_code == unknown.status_code == 401
    assert "Wrong email or password." in wrong.text and "Wrong email or password." in unknown.text
    assert (await console_client.get("/console", follow_redirects=False)).status_code == 303


async def test_five_failures_lock_the_account_even_for_the_right_password(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    email = await make_operator(engine, programme.code, "admin")
    codes = [(await login(console_client, email, f"wrong password {i}")).status_code for i in range(5)]
    assert codes == [401, 401, 401, 401, 423]
    right = await login(console_client, email, PASSWORD)
    assert right.status_code == 423 and "locked" in right.text
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE operators SET locked_until = now() - interval '1 second' WHERE email = :e"),
            {"e": email},
        )
    assert (await login(console_client, email, PASSWORD)).status_code == 303


async def test_a_form_without_its_csrf_token_is_refused(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    email = await make_operator(engine, programme.code, "analyst")
    await login(console_client, email)
    r = await console_client.post("/console/logout", data={}, follow_redirects=False)
    assert r.status_code == 403 and "Form expired" in r.text
    forged = await console_client.post("/console/logout", data={"_csrf": "0" * 64}, follow_redirects=False)
    assert forged.status_code == 403
    assert (await console_client.get("/console")).status_code == 200  # still logged in
    page = await console_client.get("/console/login")
    no_login_csrf = await console_client.post(
        "/console/login", data={"email": email, "password": PASSWORD}, follow_redirects=False
    )
    assert page.status_code == 200 and no_login_csrf.status_code == 403


async def test_idle_sessions_expire(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    email = await make_operator(engine, programme.code, "analyst")
    await login(console_client, email)
    assert (await console_client.get("/console")).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE console_sessions SET last_seen_at = now() - interval '31 minutes'"
                " WHERE operator_id = (SELECT id FROM operators WHERE email = :e)"
            ),
            {"e": email},
        )
    assert (await console_client.get("/console", follow_redirects=False)).status_code == 303


async def test_switching_programme_only_to_one_with_a_role(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme
) -> None:
    other = await make_programme(engine)
    stranger = await make_programme(engine)
    email = await make_operator(engine, programme.code, "analyst")
    await make_operator(engine, other.code, "marketer", email=email)
    await login(console_client, email)
    token = await console_csrf(console_client)
    first = await console_client.get("/console")
    assert first.text.count("<option") >= 2
    r = await console_client.post("/console/switch", data={"_csrf": token, "programme": other.code})
    assert r.status_code == 200
    assert "<strong>marketer</strong>" in r.text
    refused = await console_client.post("/console/switch", data={"_csrf": token, "programme": stranger.code})
    assert refused.status_code == 404
    assert "<strong>marketer</strong>" in (await console_client.get("/console")).text


async def test_the_hourly_job_removes_ended_sessions(
    console_client: AsyncTestClient[Any], engine: AsyncEngine, programme: Programme, settings: Any
) -> None:
    from loyalty.console.tasks import purge_console_sessions

    live_email = await make_operator(engine, programme.code, "analyst")
    idle_email = await make_operator(engine, programme.code, "analyst")
    await login(console_client, live_email)
    await login(console_client, idle_email)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE console_sessions SET last_seen_at = now() - interval '2 hours'"
                " WHERE operator_id = (SELECT id FROM operators WHERE email = :e)"
            ),
            {"e": idle_email},
        )
    removed = await purge_console_sessions({"engine": engine, "settings": settings})
    assert removed >= 1
    async with engine.connect() as conn:
        left = dict(
            (
                await conn.execute(
                    text(
                        "SELECT o.email, count(s.id) FROM operators o LEFT JOIN console_sessions s"
                        " ON s.operator_id = o.id WHERE o.email IN (:a, :b) GROUP BY o.email"
                    ),
                    {"a": live_email, "b": idle_email},
                )
            ).all()
        )
    assert left == {live_email: 1, idle_email: 0}


async def test_too_many_logins_from_one_address_are_throttled(
    settings: Any, engine: AsyncEngine, programme: Programme
) -> None:
    import dataclasses

    from loyalty.app import create_app

    email = await make_operator(engine, programme.code, "analyst")
    limited = create_app(dataclasses.replace(settings, console_login_limit=3))
    async with AsyncTestClient(app=limited) as client:
        codes = [
            (await login(client, f"other-{i}@example.invalid", "whatever it is")).status_code
            for i in range(3)
        ]
        # The limit is per address, whatever the account: even the right password waits.
        throttled = await login(client, email)
    assert codes == [401, 401, 401]
    assert throttled.status_code == 429 and "Too many login attempts" in throttled.text

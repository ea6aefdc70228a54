"""Console test helpers: an operator in a programme, and a logged-in client."""

from __future__ import annotations

import re
import uuid
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.console.repository import operator_id_by_email, set_role
from loyalty.console.service import create_operator
from loyalty.programmes import repository as programmes

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="_csrf" value="([^"]+)"')


async def make_operator(engine: AsyncEngine, programme_code: str, role: str, email: str | None = None) -> str:
    """An operator with ``role`` in the programme (added to an existing one by email)."""
    email = email or f"op-{uuid.uuid4().hex[:10]}@example.invalid"
    async with engine.begin() as conn:
        existing = await operator_id_by_email(conn, email)
        if existing is None:
            await create_operator(
                conn, email=email, programme_code=programme_code, role=role, password=PASSWORD
            )
        else:
            programme = await programmes.by_code(conn, programme_code)
            assert programme is not None
            await set_role(conn, existing, programme["id"], role)
    return email


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF field in the page"
    return found.group(1)


async def login(client: AsyncTestClient[Any], email: str, password: str = PASSWORD) -> Any:
    page = await client.get("/console/login")
    return await client.post(
        "/console/login",
        data={"email": email, "password": password, "_csrf": csrf_of(page.text), "next": "/console"},
        follow_redirects=False,
    )


async def console_csrf(client: AsyncTestClient[Any]) -> str:
    """The session's CSRF token, from the dashboard's forms."""
    page = await client.get("/console")
    assert page.status_code == 200, page.text
    return csrf_of(page.text)


def chart_option(page: str, chart_id: str) -> dict[str, Any]:
    """The ECharts option a page gives one of its charts (macros.html: ui.chart)."""
    import html
    import json

    found = re.search(rf'id="{re.escape(chart_id)}" data-option="([^"]*)"', page)
    assert found, f"no chart {chart_id} in the page"
    option: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return option

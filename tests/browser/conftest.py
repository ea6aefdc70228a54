"""Browser tests: the console in a real headless Chromium, driven by Playwright.

The service runs as it does in production: granian serving the app factory, and an arq worker,
as subprocesses on this xdist worker's test database and Redis. Playwright cannot download a
browser here; it drives the system's Chromium (Debian's ``chromium`` package), found on PATH or
at ``LOYALTY_CHROMIUM``. Without one, these tests are skipped and the run's summary says so.

Test data is made through the API with a programme's keys (as a shop would) and through the
services in a thread of its own: Playwright's sync API owns this thread's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from loyalty.settings import Settings
from tests.console.helpers import PASSWORD, make_operator
from tests.support import Programme, make_programme

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "console"
CHROMIUM_HINT = (
    "browser tests SKIPPED: no Chromium found. Install the distribution's package "
    "(`apt-get install chromium`) or set LOYALTY_CHROMIUM to a Chromium executable."
)


def chromium_path() -> str | None:
    configured = os.environ.get("LOYALTY_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if chromium_path() is not None:
        return
    if os.environ.get("LOYALTY_REQUIRE_BROWSER"):
        # CI sets this: there the browser tests are never skipped.
        raise pytest.UsageError("LOYALTY_REQUIRE_BROWSER is set but " + CHROMIUM_HINT)
    skip = pytest.mark.skip(reason=CHROMIUM_HINT)
    for item in items:
        if "tests/browser/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if chromium_path() is None:
        terminalreporter.write_line(CHROMIUM_HINT, yellow=True, bold=True)


# Playwright's sync API keeps an event loop running in this thread while it is started, and
# pytest-asyncio cannot run the async tests that xdist gives this worker afterwards. So the
# Playwright driver and the browser live for one test module (pytest tears module fixtures
# down before the next module's tests), instead of pytest-playwright's whole session.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    driver = sync_playwright().start()
    yield driver
    driver.stop()


@pytest.fixture(scope="module")
def browser_type(playwright: Any, browser_name: str) -> Any:
    return getattr(playwright, browser_name)


@pytest.fixture(scope="module")
def launch_browser(browser_type_launch_args: dict[str, Any], browser_type: Any) -> Any:
    def launch(**kwargs: Any) -> Any:
        return browser_type.launch(**{**browser_type_launch_args, **kwargs})

    return launch


@pytest.fixture(scope="module")
def browser(launch_browser: Any) -> Iterator[Any]:
    opened = launch_browser()
    yield opened
    opened.close()


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    # --no-sandbox: the tests run as root in CI, where Chromium's sandbox cannot start.
    return {**browser_type_launch_args, "executable_path": chromium_path(), "args": ["--no-sandbox"]}


@pytest.fixture(scope="module")
def browser_context_args() -> dict[str, Any]:
    # Not pytest-playwright's (session scoped, it needs the driver): a desktop viewport.
    return {"viewport": {"width": 1280, "height": 900}}


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion in a thread with its own event loop."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # re-raised in the test's thread
            error.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class LiveServer:
    url: str
    settings: Settings

    async def _with_engine(self, work: Any) -> Any:
        from loyalty.db import create_engine

        engine = create_engine(self.settings.database_url or "", pool_size=2)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    def programme(self) -> Programme:
        return run(self._with_engine(lambda engine: make_programme(engine)))  # type: ignore[no-any-return]

    def operator(self, programme: Programme, role: str, email: str | None = None) -> str:
        return run(self._with_engine(lambda engine: make_operator(engine, programme.code, role, email)))  # type: ignore[no-any-return]

    def api(self, programme: Programme, role: str = "operator") -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {programme.keys[role]}"}, timeout=30
        )


async def _fresh_database(servers: Any, name: str) -> str:
    import asyncpg

    from loyalty.db import plain_url
    from loyalty.migrate import upgrade_async
    from tests.conftest import _with_database

    admin = await asyncpg.connect(plain_url(servers.database_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(servers.database_url, name)
    await upgrade_async(url)
    return url


async def _drop_database(servers: Any, name: str) -> None:
    import asyncpg

    from loyalty.db import plain_url

    admin = await asyncpg.connect(plain_url(servers.database_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def _flush_redis(url: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def live_server(settings: Settings, servers: Any, worker_id: str, worker_index: int) -> Iterator[LiveServer]:
    """The API (granian, one process) and the worker, on a database and a Redis database of
    their own: the live worker's jobs and crons never touch what the other tests of this xdist
    worker are doing."""
    if chromium_path() is None:
        pytest.skip(CHROMIUM_HINT)
    from tests.conftest import _with_redis_db

    database = f"loyalty_test_browser_{worker_id}_{os.getpid()}"
    database_url = run(_fresh_database(servers, database))
    redis_url = _with_redis_db(servers.redis_url, 8 + worker_index)
    run(_flush_redis(redis_url))
    port = _free_port()
    served = dataclasses.replace(
        settings,
        database_url=database_url,
        redis_url=redis_url,
        api_host="127.0.0.1",
        api_port=port,
        worker_enabled=True,
        demo=False,
        log_level="WARNING",
        # Every browser logs in from 127.0.0.1, many times a run: the per-address login limit
        # is tested over HTTP (tests/console/test_console_auth.py), not here.
        console_login_limit=0,
    )
    env = {**os.environ, **served.to_env(), "PYTHONUNBUFFERED": "1"}
    logs = ROOT / ".loyalty" / "test" / f"browser-{port}.log"
    logs.parent.mkdir(parents=True, exist_ok=True)
    out = logs.open("wb")
    api = subprocess.Popen(
        [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "loyalty.app:app_from_env",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--log-level", "warning"],
        env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "loyalty.cli", "worker"],
        env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            if api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start; see {logs}")
            time.sleep(0.2)
        yield LiveServer(url=url, settings=served)
    finally:
        for process in (api, worker):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
        for process in (api, worker):
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait(5)
        out.close()
        run(_drop_database(servers, database))


@dataclasses.dataclass
class Console:
    """One test's programme, with its API keys, and a way to log in as any role."""

    server: LiveServer
    programme: Programme
    page: Any
    errors: list[str]

    @property
    def url(self) -> str:
        return f"{self.server.url}/console"

    def operator(self, role: str) -> str:
        return self.server.operator(self.programme, role)

    def login(self, role: str = "admin", email: str | None = None) -> str:
        email = email or self.operator(role)
        page = self.page
        page.goto(f"{self.url}/login")
        page.get_by_label("Email").fill(email)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(f"{self.url}")
        return email

    def api(self, role: str = "operator") -> httpx.Client:
        return self.server.api(self.programme, role)

    def goto(self, path: str) -> Any:
        return self.page.goto(f"{self.server.url}{path}")

    def chart_series(self, chart_id: str) -> list[dict[str, Any]]:
        """The series a chart was drawn with, as ECharts holds them."""
        self.page.wait_for_function(f"() => window.loyaltyCharts && window.loyaltyCharts[{chart_id!r}]")
        series: list[dict[str, Any]] = self.page.evaluate(
            f"() => window.loyaltyCharts[{chart_id!r}].getOption().series.map("
            "s => ({name: s.name, type: s.type, data: s.data}))"
        )
        return series

    def unlabelled_inputs(self) -> list[str]:
        """Visible form controls of the current page that no label names."""
        found: list[str] = self.page.evaluate(
            """() => Array.from(document.querySelectorAll('input, select, textarea'))
                .filter(el => el.type !== 'hidden' && el.offsetParent !== null)
                .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                              && !el.getAttribute('aria-labelledby'))
                .map(el => el.outerHTML.slice(0, 120))"""
        )
        return found

    def overflows_horizontally(self) -> bool:
        """True when the page is wider than the window (a layout that does not fit a phone)."""
        return bool(self.page.evaluate("() => document.documentElement.scrollWidth > window.innerWidth + 1"))

    def screenshot(self, name: str) -> None:
        """docs/console/NAME.png, when LOYALTY_SCREENSHOTS is set (make screenshots)."""
        if os.environ.get("LOYALTY_SCREENSHOTS"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            self.page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


@pytest.fixture
def console(live_server: LiveServer, page: Any) -> Iterator[Console]:
    """A fresh programme; every JavaScript error or failed request in the browser fails the test."""
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))

    def on_console(message: Any) -> None:
        # Chromium logs every non-2xx answer as "Failed to load resource"; a page answered 403
        # or a form answered 400 is intended. Broken assets are caught by status below.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(f"console {message.type}: {message.text}")

    def on_response(response: Any) -> None:
        if response.status >= 400 and response.request.resource_type in _ASSETS:
            errors.append(f"asset {response.url} answered {response.status}")

    page.on("console", on_console)
    page.on("response", on_response)
    page.set_default_timeout(15_000)
    yield Console(server=live_server, programme=live_server.programme(), page=page, errors=errors)
    assert errors == [], errors


_ASSETS = frozenset({"script", "stylesheet", "image", "font"})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"

"""A seeded schemathesis run over the whole OpenAPI, against a real server on 127.0.0.1.

Every operation gets a fixed number of cases in the examples, coverage and fuzzing phases,
sent with each role's API key in turn (a member token on /v1/me/*). The answers must never be
5xx, every error must be application/problem+json, and every answer must match the schema
documented for its status.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import engine
from schemathesis.engine import Status, events
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty.settings import Settings
from tests.support import Programme, make_programme, new_key
from tests.webhook_receiver import Receiver

CASES_PER_OPERATION = int(os.environ.get("LOYALTY_SCHEMATHESIS_CASES", "12"))
ROLES = ("operator", "ecommerce", "crm", "marketing")
PROBLEM = "application/problem+json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """The webhook receiver on its own event loop: the test itself blocks on HTTP calls."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    receiver = asyncio.run_coroutine_threadsafe(Receiver().start(), loop).result(10)
    try:
        yield receiver
    finally:
        asyncio.run_coroutine_threadsafe(receiver.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


@pytest.fixture(scope="module")
async def live_server(settings: Settings) -> AsyncIterator[str]:
    """The API under granian, as `loyalty serve` runs it, on a free loopback port."""
    port = _free_port()
    env = {**os.environ, **settings.to_env(), "LOYALTY_API_PORT": str(port)}
    command = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--factory",
        "loyalty.app:app_from_env",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--no-ws",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client:
            for _ in range(200):
                try:
                    if (await client.get(f"{base}/health/live")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None:
                    raise RuntimeError(process.stderr.read().decode() if process.stderr else "granian exited")
                await asyncio.sleep(0.05)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture(scope="module")
async def seeded(live_server: str, engine: AsyncEngine) -> tuple[Programme, str]:
    return await _seed(live_server, engine)


@pytest.fixture
async def fresh(live_server: str, engine: AsyncEngine) -> tuple[Programme, str]:
    """A programme of its own: the conformance run revokes the keys it finds."""
    return await _seed(live_server, engine)


async def _seed(live_server: str, engine: AsyncEngine) -> tuple[Programme, str]:
    """A programme with a budget, members, points and a hold, and a member token for alice."""
    programme = await make_programme(engine)
    async with httpx.AsyncClient(base_url=live_server) as client:

        async def post(path: str, body: dict[str, Any], role: str = "operator") -> Any:
            r = await client.post(path, json=body, headers=programme.headers(role))
            assert r.status_code in (200, 201), r.text
            return r.json()

        await post("/v1/budgets", {"code": "base", "cap": 1_000_000, "unit_cost_micros": 10_000})
        for member in ("alice", "bob"):
            await post("/v1/members", {"member_id": member}, role="crm")
        await post(
            "/v1/earn", {"member_id": "alice", "budget": "base", "points": 500, "reference": "order-1"}
        )
        await post("/v1/holds", {"member_id": "alice", "points": 10}, role="ecommerce")
        token = (await post("/v1/member-tokens", {"member_id": "alice"}, role="crm"))["token"]
    return programme, token


CHECKS = (
    "not_a_server_error",
    "content_type_conformance",
    "response_schema_conformance",
    "problem_json_errors",
)


# (method, path) -> the roles it answered 403 to: later cases of that operation take another
# role, so that most cases get past the guard to the code behind it.
_FORBIDDEN: dict[tuple[str, str], set[str]] = {}


@schemathesis.check
def problem_json_errors(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx answer is an RFC 9457 problem."""
    role = (case.headers or {}).get("X-Test-Role")
    if response.status_code == 403 and role:
        _FORBIDDEN.setdefault((case.method, case.path), set()).add(role)
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", [""])
        if isinstance(content_type, list):
            content_type = content_type[0] if content_type else ""
        assert str(content_type).startswith(PROBLEM), (
            f"{response.status_code} answered as {content_type!r}, not {PROBLEM}"
        )
    return None


def _run(
    live_server: str,
    seeded: tuple[Programme, str],
    receiver: Receiver,
    *,
    checks: dict[str, dict[str, Any]],
    phases: dict[str, dict[str, Any]],
    operations: tuple[tuple[str, str], ...] = (),
) -> tuple[list[str], dict[int, int], set[str]]:
    """One seeded schemathesis run; the failures, the answers by status, and the operations
    that got a 2xx. ``operations`` (method, path) restricts it to those."""
    config = schemathesis.Config.from_dict(
        {
            "seed": int(os.environ.get("LOYALTY_SCHEMATHESIS_SEED", "20261206")),
            # One worker: generation in threads is not safe (hypothesis imports, regex compiles).
            "workers": 1,
            "generation": {"max-examples": CASES_PER_OPERATION, "deterministic": True},
            "phases": phases,
            "checks": {"enabled": False, **checks},
        }
    )
    schema = schemathesis.openapi.from_url(f"{live_server}/schema/openapi.json", config=config)
    _DOCUMENT.clear()
    _DOCUMENT.update(httpx.get(f"{live_server}/schema/openapi.json").json())
    if operations:
        wanted = set(operations)
        schema = schema.include(lambda ctx: (ctx.operation.method.upper(), ctx.operation.path) in wanted)
    programme, token = seeded
    roles = itertools.cycle(ROLES)
    _FORBIDDEN.clear()

    @schema.hook
    def map_case(context: Any, case: Any) -> Any:
        # Deterministic: each case takes the next role, so every operation meets every role.
        role = "member"
        if case.path == "/v1/me" or case.path.startswith("/v1/me/"):
            authorization = f"Bearer {token}"
        else:
            forbidden = _FORBIDDEN.get((case.method, case.path), set())
            role = next(roles)
            for _ in ROLES:
                if role not in forbidden:
                    break
                role = next(roles)
            authorization = f"Bearer {programme.keys[role]}"
        case.headers = {**(case.headers or {}), "Authorization": authorization, "X-Test-Role": role}
        if not _negative(case):
            # A negative case may leave the header out on purpose: the lane must refuse it.
            case.headers.setdefault("Idempotency-Key", new_key())
        if operations:
            case.body = _integral(case.body)
            if not _negative(case):
                # Valid values of the seeded programme, so valid cases reach the domain and
                # its 2xx, not only "no such member".
                for container in (case.body, case.query):
                    if isinstance(container, dict):
                        for name, value in (("member_id", "alice"), ("budget", "base")):
                            if name in container:
                                container[name] = value
        body = case.body
        if case.path.startswith("/v1/webhooks/endpoints") and isinstance(body, dict) and "url" in body:
            body["url"] = receiver.url
        return case

    failures: list[str] = []
    errors: list[str] = []
    statuses: dict[int, int] = {}
    succeeded: set[str] = set()
    cases = 0
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.NonFatalError | events.FatalError):
            errors.append(str(getattr(event, "value", None) or getattr(event, "exception", event)))
        recorder = getattr(event, "recorder", None)
        if recorder is None or not isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            continue
        cases += len(recorder.cases)
        for interaction in recorder.interactions.values():
            if interaction.response is not None:
                status = interaction.response.status_code
                statuses[status] = statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    succeeded.add(f"{interaction.request.method} {recorder.label}")
        for case_id, case_checks in recorder.checks.items():
            for check in case_checks:
                if check.status == Status.FAILURE:
                    interaction = recorder.interactions.get(case_id)
                    where = ""
                    if interaction is not None:
                        request, response = interaction.request, interaction.response
                        status = response.status_code if response is not None else "-"
                        body = request.body[:300] if request.body else b""
                        where = f"{request.method} {request.uri} {body!r} -> {status}"
                        if response is not None:
                            where += f" {response.content[:200]!r}"
                    failure = check.failure_info.failure if check.failure_info else None
                    failures.append(
                        f"{check.name}: {where}: {getattr(failure, 'title', '')} {str(failure)[:400]}"
                    )
    print(f"schemathesis: {cases} cases, {len(failures)} failures, answers {sorted(statuses.items())}")
    print(f"operations with a 2xx answer: {len(succeeded)}: {sorted(succeeded)}")
    assert not errors, "\n".join(errors[:20])
    return failures, statuses, succeeded


def _negative(case: Any) -> bool:
    """A case generated to break the schema (schemathesis' negative mode)."""
    meta = getattr(case, "meta", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    return str(getattr(mode, "value", mode)) == "negative"


@schemathesis.check
def schema_valid_requests_pass_the_checks(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request the document allows is never refused as breaking it (``invalid_request``, 413,
    415). ``invalid_input`` stays allowed: the domain refusing a value the schema cannot rule
    out (an event type the programme does not declare)."""
    if _negative(case) or response.status_code not in (400, 413, 415):
        return None
    problem = response.json()
    if problem.get("reason") == "must not contain a NUL character":
        return None  # the document's description states it for every text
    code = problem.get("code")
    assert code != "invalid_request" and response.status_code != 413 and response.status_code != 415, (
        f"a request the schema allows was refused: {response.text[:300]}"
    )
    return None


@schemathesis.check
def schema_breaking_requests_are_refused(ctx: Any, response: Any, case: Any) -> bool | None:
    """A request that breaks the document is refused by the lane's own checks before the domain
    sees it: a 400/413/415, a 403 for the role, or the router's 404/405 for a path that does not
    parse; never a 2xx, nor the domain's answers (no such member or benefit, a conflict, a 422)."""
    if not _negative(case) or case.method.upper() == "OPTIONS":  # OPTIONS answers for every path
        return None
    if _only_unobservable_mutations(case):
        return None
    status = response.status_code
    code = response.json().get("code") if status >= 400 else None
    assert status in (400, 403, 405, 413, 415) or (status == 404 and code == "not_found"), (
        f"a request breaking the schema got {status} {code}: {response.text[:300]}"
    )
    return None


_DOCUMENT: dict[str, Any] = {}


def _text_fits(value: Any, schema: dict[str, Any]) -> bool:
    """Whether ``value``, as the text HTTP carries, meets a parameter's documented schema."""
    members = [m for m in schema.get("oneOf", [schema]) if m.get("type") != "null"] or [schema]
    text = str(value)
    for member in members:
        if member.get("type") == "integer":
            try:
                number = int(text)
            except ValueError:
                continue
            if member.get("minimum", number) <= number <= member.get("maximum", number):
                return True
        elif member.get("type", "string") == "string" and (
            member.get("minLength", 0) <= len(text) <= member.get("maxLength", len(text))
        ):
            return True
    return False


def _only_unobservable_mutations(case: Any) -> bool:
    """A negative case whose only "invalid" values are path, query or header parameters that,
    as text, are valid (a number where a string is documented: HTTP carries both as text).
    No server can tell those apart from a valid request."""
    negated = {
        str(getattr(location, "value", location))
        for location, info in case.meta.components.items()
        if str(getattr(info.mode, "value", info.mode)) == "negative"
    }
    if not negated or not negated <= {"path", "query", "header"}:
        return False
    operation = _DOCUMENT.get("paths", {}).get(case.operation.path, {}).get(case.method.lower(), {})
    sources = {"path": case.path_parameters or {}, "query": case.query or {}, "header": case.headers or {}}
    for parameter in operation.get("parameters", []):
        given = sources.get(parameter["in"], {})
        if parameter["name"] not in given:
            if parameter.get("required"):
                return False
            continue
        if not _text_fits(given[parameter["name"]], parameter.get("schema", {})):
            return False
    return True


def _integral(value: Any) -> Any:
    """JSON Schema counts 26108.0 as an integer; the API reads integers as JSON writes them,
    without a fraction (msgspec's strict decoding, like most clients' encoders)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def test_api_conforms(live_server: str, seeded: tuple[Programme, str], receiver: Receiver) -> None:
    failures, _, _ = _run(
        live_server,
        seeded,
        receiver,
        checks={name: {"enabled": True} for name in CHECKS},
        phases={
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": True, "max-steps": 6},
        },
    )
    assert not failures, "\n".join(sorted(set(failures))[:60])


def test_fast_routes_enforce_exactly_what_they_document(
    live_server: str, fresh: tuple[Programme, str], receiver: Receiver, settings: Settings
) -> None:
    """Each hot route is served by a lane, not by its documented handler. Generated from the
    OpenAPI document: every valid request (positive cases) gets past the lane's checks (no
    400), and every invalid one (negative cases: a value over a documented limit, a wrong type,
    an unknown field, a missing Idempotency-Key) is refused with a 4xx before anything is
    written. A limit enforced but not documented, or documented but not enforced, fails it."""
    from loyalty.app import create_app
    from loyalty.fast_routes import FastLane

    app = create_app(settings)
    fast = {
        (method, route.path_format)
        for route in app.routes
        for handler in getattr(route, "route_handlers", ())
        for method in handler.http_methods
        if any(getattr(m, "middleware", None) is FastLane for m in handler.middleware or ())
    }
    assert {("POST", "/v1/earn"), ("POST", "/v1/events"), ("GET", "/v1/benefits/{code}/check")} <= fast
    failures, statuses, succeeded = _run(
        live_server,
        fresh,
        receiver,
        checks={
            "not_a_server_error": {"enabled": True},
            "problem_json_errors": {"enabled": True},
            "schema_valid_requests_pass_the_checks": {"enabled": True},
            "schema_breaking_requests_are_refused": {"enabled": True},
        },
        phases={
            "examples": {"enabled": False},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": False},
        },
        operations=tuple(sorted(fast)),
    )
    written = {op for op in succeeded if op.startswith("POST POST")}
    assert statuses.get(400, 0) > 0 and len(written) >= 3, (statuses, written)
    assert not failures, "\n".join(sorted(set(failures))[:60])


async def test_a_10_mib_body_gets_a_413_problem_from_the_real_server(
    live_server: str, engine: AsyncEngine
) -> None:
    """Over a real connection the client reads the 413, instead of meeting a closed socket."""
    # Keys of its own: the conformance run may have revoked the seeded programme's keys.
    programme = await make_programme(engine)
    raw = b'{"member_id": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    async with httpx.AsyncClient(base_url=live_server, timeout=30) as client:
        for path, role in (("/v1/earn", "ecommerce"), ("/v1/members", "crm")):
            headers = {**programme.headers(role), "Content-Type": "application/json"}
            r = await client.post(path, content=raw, headers=headers)
            assert r.status_code == 413, r.text
            assert r.headers["content-type"].startswith(PROBLEM)
            assert r.json()["code"] == "request_too_large"

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"member_id": "'
            for _ in range(40):
                yield b"x" * 65536
            yield b'"}'

        headers = {**programme.headers("crm"), "Content-Type": "application/json"}
        r = await client.post("/v1/members", content=chunks(), headers=headers)
        assert r.status_code == 413, r.text
        r = await client.post("/v1/members", content=b"{}", headers={**headers, "Content-Type": "text/plain"})
        assert r.status_code == 415, r.text
        assert r.headers["content-type"].startswith(PROBLEM)

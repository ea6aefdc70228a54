"""The chaos suite (`make chaos`): outages against a real `loyalty serve` under load."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.chaos.harness import Load, Plan, Rig, Serve

LAST_LOG = Path(__file__).resolve().parents[2] / ".loyalty" / "chaos-last.log"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--short", action="store_true", help="fewer kills and shorter outages (CI)")


@pytest.fixture(scope="session")
def plan(request: pytest.FixtureRequest) -> Plan:
    if request.config.getoption("--short") or os.environ.get("LOYALTY_CHAOS_SHORT"):
        return Plan(kills=3, pg_outage=4.0, redis_outage=10.0)
    return Plan(kills=20, pg_outage=10.0, redis_outage=60.0)


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    serve = Serve.create()
    serve.start()
    load = None
    try:
        serve.wait_ready()
        keys = serve.keys()
        operator = keys["operator"]
        members = [f"chaos-m{i}" for i in range(8)]
        headers = {"Authorization": f"Bearer {operator}"}
        for member in members:
            r = httpx.post(
                serve.base_url + "/v1/members",
                json={"member_id": member},
                headers={**headers, "Idempotency-Key": f"enrol-{member}"},
                timeout=10,
            )
            assert r.status_code in (200, 201), r.text
        load = Load(serve.base_url, operator, members)
        load.start()
        yield Rig(serve, load, operator)
    finally:
        if load is not None:
            load.stop()
        took, survivors = serve.stop()
        # The run's log outlives its data dir, for a look after a failure.
        LAST_LOG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(serve.log_path, LAST_LOG)
        print(f"\nloyalty serve stopped in {took:.2f}s; survivors: {[p.pid for p in survivors]}")
        if not survivors:
            serve.cleanup()
        else:
            print(f"left {serve.data_dir} for inspection")
        print(f"serve log: {LAST_LOG}")

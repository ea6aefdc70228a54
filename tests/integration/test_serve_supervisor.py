"""`loyalty serve`'s supervisor: a dead child is restarted, and a signal stops every process of
its tree, every time (granian's workers included), even just after the port opened."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import psutil

from loyalty.settings import Settings
from tests.chaos.harness import Serve, free_port, wait_until


def _serve(settings: Settings, tmp_path: Path) -> Serve:
    assert settings.database_url and settings.redis_url
    serve = Serve.create(
        data_dir=tmp_path,
        extra_env={
            "LOYALTY_DATABASE_URL": settings.database_url,
            "LOYALTY_REDIS_URL": settings.redis_url,
            "LOYALTY_SECRET_KEY": settings.secret_key or "",
            "LOYALTY_DEMO": "false",
            "LOYALTY_API_WORKERS": "1",
        },
    )
    serve.port = free_port()
    serve.env["LOYALTY_API_PORT"] = str(serve.port)
    return serve


def _listening(serve: Serve) -> bool:
    try:
        return httpx.get(serve.base_url + "/health/live", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def test_dead_children_are_restarted_and_sigterm_stops_every_process(
    settings: Settings, tmp_path: Path
) -> None:
    """One serve, to stay quick: kill -9 the worker, then the API; each comes back and the
    other keeps running. Then SIGTERM just after the restarted API's port opens: every process
    of the tree ends, granian's workers included, well within the stop timeout."""
    serve = _serve(settings, tmp_path)
    serve.start()
    try:
        wait_until(lambda: _listening(serve), 60, interval=0.05)
        # The supervisor checks the port on its own clock: until it prints its banner, a child
        # that dies counts as a failed start-up (serve exits) rather than a restart.
        wait_until(lambda: "loyalty is running" in serve.log_path.read_text(), 30, interval=0.05)
        worker = serve.child("worker")
        api = serve.child("api")
        assert worker is not None and api is not None
        granian_workers = api.children()
        assert granian_workers

        worker.send_signal(signal.SIGKILL)
        new_worker = serve.wait_child("worker", other_than=worker.pid, timeout=10)
        assert serve.child("api") is not None and serve.child("api").pid == api.pid  # type: ignore[union-attr]
        assert _listening(serve)

        api.send_signal(signal.SIGKILL)
        new_api = serve.wait_child("api", other_than=api.pid, timeout=10)
        wait_until(lambda: _listening(serve), 30, interval=0.02)
        processes = serve.all_processes()
        # The killed master's workers did not linger with parent 1.
        for proc in granian_workers:
            assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
        assert new_api.pid != api.pid
        assert serve.child("worker") is not None and serve.child("worker").pid == new_worker.pid  # type: ignore[union-attr]
        assert serve.process is not None and serve.process.poll() is None
        # The supervisor, granian's master and its worker, and the arq worker.
        assert len(processes) >= 4, [p.cmdline() for p in processes]
    finally:
        took, survivors = serve.stop()
    assert not survivors, [(p.pid, p.cmdline()) for p in survivors]
    assert serve.process.returncode == 0
    assert took < 10, f"stopping took {took:.1f}s"
    assert not _listening(serve)
    log = serve.log_path.read_text()
    assert "worker (pid" in log and "api (pid" in log and "restarting in" in log

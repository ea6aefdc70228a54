"""Every `loyalty` command fails with one `error: ...` line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from loyalty import cli
from loyalty.cli_errors import TRACEBACK_HINT, describe
from loyalty.errors import DomainError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def nothing_listens(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Settings whose PostgreSQL and Redis are ports nobody listens on."""
    env = {
        "LOYALTY_DATABASE_URL": f"postgresql://loyalty@127.0.0.1:{_free_port()}/loyalty",
        "LOYALTY_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0",
        "LOYALTY_DATA_DIR": str(tmp_path / "data"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


COMMANDS = [
    ["migrate"],
    ["demo"],
    ["keys", "create", "--programme", "demo", "--role", "operator", "--name", "till"],
    ["programmes", "create", "acme", "--name", "Acme"],
    ["programmes", "list"],
    ["ledger", "verify"],
    ["tiers", "reassess", "--programme", "demo"],
    ["backup", "{tmp}/loyalty.dump"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(argv[:2]) for argv in COMMANDS])
def test_a_server_that_does_not_answer_is_one_line(
    argv: list[str], nothing_listens: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main([part.replace("{tmp}", str(tmp_path)) for part in argv])

    err = capsys.readouterr().err
    assert code == 1
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error: ")
    assert "127.0.0.1" in line and ("refused" in line.lower() or "connect" in line.lower()), line


def test_a_bad_setting_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LOYALTY_DB_POOL_SIZE", "lots")

    assert cli.main(["migrate"]) == 1

    assert capsys.readouterr().err == "error: LOYALTY_DB_POOL_SIZE must be an integer, got 'lots'\n"


def test_an_unexpected_error_is_one_line_that_says_how_to_see_more(
    monkeypatch: pytest.MonkeyPatch, nothing_listens: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: object) -> int:
        raise KeyError("tier")

    monkeypatch.setattr(cli, "cmd_migrate", broken)

    assert cli.main(["migrate"]) == 1

    assert capsys.readouterr().err == f"error: unexpected KeyError: 'tier' ({TRACEBACK_HINT})\n"


def test_ctrl_c_is_one_line_and_exit_130(
    monkeypatch: pytest.MonkeyPatch, nothing_listens: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "cmd_migrate", interrupted)

    assert cli.main(["migrate"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_the_installed_command_prints_one_line_and_the_traceback_only_when_asked(tmp_path: Path) -> None:
    loyalty = Path(sys.executable).with_name("loyalty")
    env = {key: value for key, value in os.environ.items() if not key.startswith("LOYALTY_")}
    env |= {
        "LOYALTY_DATABASE_URL": f"postgresql://loyalty@127.0.0.1:{_free_port()}/loyalty",
        "LOYALTY_REDIS_URL": f"redis://127.0.0.1:{_free_port()}/0",
        "LOYALTY_DATA_DIR": str(tmp_path),
    }

    def start(extra: dict[str, str]) -> subprocess.Popen[str]:
        command = [str(loyalty), "ledger", "verify"]
        return subprocess.Popen(
            command, env=env | extra, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
        )

    # Both at once: each is mostly interpreter start-up.
    quiet_run, loud_run = start({}), start({"LOYALTY_LOG_LEVEL": "DEBUG"})
    quiet = subprocess.CompletedProcess(quiet_run.args, 0, "", quiet_run.communicate(timeout=60)[1])
    loud = subprocess.CompletedProcess(loud_run.args, 0, "", loud_run.communicate(timeout=60)[1])
    quiet.returncode, loud.returncode = quiet_run.returncode, loud_run.returncode

    assert quiet.returncode == 1 and loud.returncode == 1
    assert quiet.stderr.count("\n") == 1 and quiet.stderr.startswith("error: cannot connect: ")
    assert "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.splitlines()[-1] == quiet.stderr.strip()


async def test_a_refusal_of_the_database_is_named_in_one_line(engine: AsyncEngine) -> None:
    with pytest.raises(Exception) as caught:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO programmes (code, name, currency) VALUES ('Not A Code', 'x', 'CNY')")
            )

    line = describe(caught.value)

    assert line.startswith('database: new row for relation "programmes" violates check constraint'), line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (DomainError("no programme 'acme'"), "no programme 'acme'"),
        (
            ValueError("LOYALTY_API_PORT must be an integer, got 'x'"),
            "LOYALTY_API_PORT must be an integer, got 'x'",
        ),
        (
            FileNotFoundError(2, "No such file or directory", "/srv/x.dump"),
            "/srv/x.dump: No such file or directory",
        ),
        (
            ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
            "cannot connect: [Errno 111] Connect call failed ('127.0.0.1', 5432)",
        ),
        (ExceptionGroup("tasks", [DomainError("budget closed")]), "budget closed"),
        (RuntimeError("two\nlines"), f"unexpected RuntimeError: two lines ({TRACEBACK_HINT})"),
    ],
    ids=["domain", "setting", "file", "connection", "group", "unexpected"],
)
def test_describe(error: BaseException, line: str) -> None:
    assert describe(error) == line


def test_describe_follows_raise_from() -> None:
    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except OSError as exc:
            raise RuntimeError("could not start") from exc
    except RuntimeError as exc:
        assert describe(exc) == "cannot connect: [Errno 111] Connect call failed"

"""Raw PostgreSQL baselines with pgbench: the same ledger transaction without the service.

"raw" scripts call a plain PL/pgSQL function over plain tables (balances as updated columns,
one transaction row, two entries, a lot): what a minimal ledger on this server can do.
"engine" scripts call our own posting functions directly: the service minus HTTP.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.workloads import BUDGETS, EARN_POINTS, MEMBERS, SPEND_POINTS

# Budgets are accounts 1..100, members 1001..11000, the redemption sink 16 rows at 100001..
_MEMBER_BASE = 1000
_SINK_BASE = 100_000
_SINK_SHARDS = 16

RAW_SCHEMA = f"""
DROP TABLE IF EXISTS raw_entries, raw_lots, raw_transactions, raw_accounts;
CREATE TABLE raw_accounts (id bigint PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE raw_transactions (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text NOT NULL, amount bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE raw_entries (
    txn_id bigint NOT NULL, seq int NOT NULL, account_id bigint NOT NULL, amount bigint NOT NULL,
    PRIMARY KEY (txn_id, seq));
CREATE TABLE raw_lots (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account_id bigint NOT NULL, txn_id bigint NOT NULL,
    amount bigint NOT NULL, remaining bigint NOT NULL);
CREATE INDEX ON raw_lots (account_id, id) WHERE remaining > 0;

INSERT INTO raw_accounts SELECT i, 1000000000000 FROM generate_series(1, {BUDGETS}) i;
INSERT INTO raw_accounts SELECT {_MEMBER_BASE} + i, 1000000 FROM generate_series(1, {MEMBERS}) i;
INSERT INTO raw_accounts SELECT {_SINK_BASE} + i, 0 FROM generate_series(0, {_SINK_SHARDS - 1}) i;
INSERT INTO raw_lots (account_id, txn_id, amount, remaining)
SELECT {_MEMBER_BASE} + i, 0, 1000000, 1000000 FROM generate_series(1, {MEMBERS}) i;

-- An earn: budget pays member (budget first: lower ids, one lock order), two entries, a lot.
CREATE OR REPLACE FUNCTION raw_earn(p_budget bigint, p_member bigint, p_amount bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v_txn bigint;
BEGIN
    UPDATE raw_accounts SET balance = balance - p_amount WHERE id = p_budget;
    UPDATE raw_accounts SET balance = balance + p_amount WHERE id = p_member;
    INSERT INTO raw_transactions (kind, amount) VALUES ('earn', p_amount) RETURNING id INTO v_txn;
    INSERT INTO raw_entries VALUES (v_txn, 0, p_budget, -p_amount), (v_txn, 1, p_member, p_amount);
    INSERT INTO raw_lots (account_id, txn_id, amount, remaining) VALUES (p_member, v_txn, p_amount, p_amount);
    RETURN v_txn;
END $$;

-- A spend: checked debit of the member, the oldest lot, a random sink shard, two entries.
CREATE OR REPLACE FUNCTION raw_spend(p_member bigint, p_amount bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE v_txn bigint; v_sink bigint := {_SINK_BASE} + floor(random() * {_SINK_SHARDS})::int;
BEGIN
    UPDATE raw_accounts SET balance = balance - p_amount WHERE id = p_member AND balance >= p_amount;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'insufficient points';
    END IF;
    UPDATE raw_lots SET remaining = remaining - p_amount
    WHERE id = (SELECT id FROM raw_lots WHERE account_id = p_member AND remaining >= p_amount ORDER BY id LIMIT 1);
    UPDATE raw_accounts SET balance = balance + p_amount WHERE id = v_sink;
    INSERT INTO raw_transactions (kind, amount) VALUES ('spend', p_amount) RETURNING id INTO v_txn;
    INSERT INTO raw_entries VALUES (v_txn, 0, p_member, -p_amount), (v_txn, 1, v_sink, p_amount);
    RETURN v_txn;
END $$;
"""

_MEMBER = f"\\set m random(1, {MEMBERS})\n"
_BUDGET = f"\\set b random(1, {BUDGETS})\n"
# Engine calls carry a fresh idempotency key, as every HTTP write does.
_ENGINE_EARN = (
    "SELECT * FROM ledger_earn(:p, gen_random_uuid()::text, '\\x01'::bytea, 'm' || :m, 'b' || :b, "
    f"{EARN_POINTS}, false, NULL, NULL, NULL, NULL, NULL, 'pgbench');\n"
)

SCRIPTS: dict[str, str] = {
    "raw earn-spread": _MEMBER + _BUDGET + f"SELECT raw_earn(:b, {_MEMBER_BASE} + :m, {EARN_POINTS});\n",
    "raw earn-hot": _MEMBER + f"SELECT raw_earn(1, {_MEMBER_BASE} + :m, {EARN_POINTS});\n",
    "raw spend": _MEMBER + f"SELECT raw_spend({_MEMBER_BASE} + :m, {SPEND_POINTS});\n",
    "engine earn-spread": _MEMBER + _BUDGET + _ENGINE_EARN,
    "engine earn-hot": _MEMBER + "\\set b 1\n" + _ENGINE_EARN,
    "engine spend": _MEMBER
    + "SELECT * FROM ledger_spend(:p, gen_random_uuid()::text, '\\x01'::bytea, 'm' || :m, "
    f"{SPEND_POINTS}, NULL, NULL, NULL, 'pgbench');\n",
}


@dataclass
class PgbenchResult:
    tps: float
    latency_avg_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    transactions: int
    failed: int


async def create_raw_schema(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(RAW_SCHEMA)
        await conn.execute("VACUUM ANALYZE raw_accounts, raw_lots")
    finally:
        await conn.close()


async def find_pgbench(url: str) -> Path:
    """pgbench next to the server's own binaries (the wheel ships it), else on PATH."""
    conn = await asyncpg.connect(url)
    try:
        bindir = await conn.fetchval("SELECT setting FROM pg_config WHERE name = 'BINDIR'")
    except asyncpg.PostgresError:
        bindir = None
    finally:
        await conn.close()
    if bindir and (Path(bindir) / "pgbench").exists():
        return Path(bindir) / "pgbench"
    found = shutil.which("pgbench")
    if found is None:
        raise FileNotFoundError("pgbench: not next to the server's binaries, nor on PATH")
    return Path(found)


async def run(
    pgbench: Path, url: str, script: str, *, clients: int, duration: float, programme_id: int
) -> PgbenchResult:
    with tempfile.TemporaryDirectory(prefix="loyalty-pgbench-") as tmp:
        script_file = Path(tmp) / "script.sql"
        script_file.write_text(script)
        command = [
            str(pgbench), "-n", "-M", "prepared",
            "-c", str(clients), "-j", str(min(clients, 2)),
            "-T", str(max(1, round(duration))),
            "-D", f"p={programme_id}",
            "-f", str(script_file),
            "-l", f"--log-prefix={tmp}/log",
            url,
        ]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            out, err = await process.communicate()
        except asyncio.CancelledError:
            # Ctrl-C: stop pgbench now rather than let it run out its -T.
            process.kill()
            await process.wait()
            raise
        if process.returncode != 0:
            raise RuntimeError(f"pgbench failed ({process.returncode}):\n{err.decode()}\n{out.decode()}")
        latencies = _logged_latencies(Path(tmp))
    return _result(out.decode(), latencies)


def _logged_latencies(directory: Path) -> list[int]:
    # Per-transaction log: client_id transaction_no latency_us script_no epoch epoch_us.
    # A failed transaction logs "failed"/"serialization"/... instead of a latency: skipped.
    latencies: list[int] = []
    for log in directory.glob("log.*"):
        for line in log.read_text().splitlines():
            field = line.split(" ", 3)[2]
            if field.isdigit():
                latencies.append(int(field))
    latencies.sort()
    return latencies


def _result(stdout: str, latencies: list[int]) -> PgbenchResult:
    def number(pattern: str) -> float:
        match = re.search(pattern, stdout)
        return float(match.group(1)) if match else 0.0

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000 if latencies else 0.0

    return PgbenchResult(
        tps=number(r"tps = ([\d.]+) \(without initial connection time\)"),
        latency_avg_ms=number(r"latency average = ([\d.]+) ms"),
        p50_ms=pct(0.50),
        p90_ms=pct(0.90),
        p99_ms=pct(0.99),
        transactions=int(number(r"number of transactions actually processed: (\d+)")),
        failed=int(number(r"number of failed transactions: (\d+)")),
    )

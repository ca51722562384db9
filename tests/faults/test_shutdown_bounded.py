"""SIGTERM while the database refuses every write: the server still exits, promptly,
and what it accepted but could not write is in the spill file, not lost."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from pathlib import Path

import httpx

from tests.faults.test_server_sigkill import _token, server_process
from tests.helpers.simnode import agent_at, eventually, free_port


async def test_sigterm_with_a_locked_database_exits_and_spills(tmp_path: Path) -> None:
    db_path = tmp_path / "agft.db"
    url = f"sqlite:///{db_path}"
    token = _token(url, "term-node")
    spill = tmp_path / "unwritten.jsonl"
    http_port, grpc_port = free_port(), free_port()
    env = {
        "AGFT_PERSIST_SPILL_PATH": str(spill),
        "AGFT_PERSIST_SHUTDOWN_S": "1",
        "AGFT_PERSIST_STUCK_AFTER_S": "1",
    }
    async with agent_at(f"127.0.0.1:{grpc_port}", "term-node", token, instances=1) as ra:
        agent = ra.agent
        with server_process(url, http_port, grpc_port, **env) as proc:
            await eventually(lambda: agent.windows_sent >= 3, 20, "windows flowing")
            # Another process holds the database: every write now fails as "locked".
            # (It waits out a write the server has in flight: with no wait, one landing
            # at this instant made the test itself fail on "locked".)
            holder = sqlite3.connect(db_path, timeout=10)
            holder.execute("BEGIN EXCLUSIVE")
            try:
                sent = agent.windows_sent
                await eventually(lambda: agent.windows_sent >= sent + 10, 20, "more windows")
                async with httpx.AsyncClient() as client:
                    health = await client.get(f"http://127.0.0.1:{http_port}/healthz", timeout=10)
                assert health.status_code == 503
                assert "stuck" in health.json()["detail"]["writer"]
                proc.send_signal(signal.SIGTERM)
                started = time.monotonic()
                code = await asyncio.to_thread(proc.wait, 30)
                took = time.monotonic() - started
            finally:
                holder.rollback()
                holder.close()
    print(f"SIGTERM with a locked database: exit {code} after {took:.1f} s")
    # Bounded: 1 s for the writer, a write already waiting on SQLite's 5 s busy
    # timeout, the gRPC grace period.
    assert took < 12
    rows = [json.loads(line) for line in spill.read_text().splitlines()]
    assert {r["kind"] for r in rows} >= {"decision"}
    assert len(rows) >= 10

"""The server killed with SIGKILL, again and again: no GPU stays at a lowered clock.

A real `agft server` process (SQLite file), a real agent on a simulated node over
loopback gRPC. Each trial: the clocks are locked low, the server is SIGKILLed, every
lowered clock must be back at default within the lease; then a new server process
takes over and the agent reconnects. Learning must survive kills too: states are saved
on a timer, so a kill costs at most a few seconds of it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy import create_engine, func, select

from server.auth.store import create_node_token
from server.fleet.decider import REPLAYED_REASON
from server.store.database import make_engine, make_session_factory, normalise_url
from server.store.migrate import upgrade_to_head
from server.store.models import Decision, PolicyState
from tests.helpers.simnode import agent_at, eventually, free_port

LEASE_S = 1.0
TRIALS = 5


@contextmanager
def server_process(
    url: str, http_port: int, grpc_port: int, **env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`agft server` as its own process, yielded once /healthz answers."""
    environ = {
        **os.environ,
        "AGFT_DATABASE_URL": url,
        "AGFT_WINDOW_S": "0.2",
        "AGFT_LEASE_S": str(LEASE_S),
        "AGFT_PERSIST_SPILL_PATH": "",
        **env,
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agft_cli.main",
            "server",
            "--port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
        ],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, "server exited at start"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def _token(url: str, node_id: str) -> str:
    upgrade_to_head(url)
    engine = make_engine(url)
    try:
        return create_node_token(make_session_factory(engine), node_id)[1]
    finally:
        engine.dispose()


async def test_every_lowered_clock_is_back_at_default_after_each_sigkill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'agft.db'}"
    token = _token(url, "kill-node")
    http_port, grpc_port = free_port(), free_port()
    reset_after: list[float] = []
    async with agent_at(f"127.0.0.1:{grpc_port}", "kill-node", token) as ra:
        backend = ra.node.backend
        for trial in range(TRIALS):
            env = {"AGFT_POLICY": "static", "AGFT_STATIC_CLOCK_MHZ": "1200"}
            with server_process(url, http_port, grpc_port, **env) as proc:
                await eventually(
                    lambda: all(backend.locked_sm_clocks_mhz(i) is not None for i in (0, 1)),
                    20,
                    f"clocks locked low (trial {trial})",
                )
                proc.send_signal(signal.SIGKILL)  # no clean-up of any kind runs
                killed_at = time.monotonic()
                await eventually(
                    lambda: all(backend.locked_sm_clocks_mhz(i) is None for i in (0, 1)),
                    LEASE_S + 2,
                    f"clocks back at default (trial {trial})",
                )
                reset_after.append(time.monotonic() - killed_at)
    print(f"reset after SIGKILL, {TRIALS} trials, lease {LEASE_S} s: {reset_after}")
    assert len(reset_after) == TRIALS
    # The lease runs on the agent's clock; the lease checker adds its tick.
    assert max(reset_after) <= LEASE_S + 0.5
    assert ra.agent.sessions_started >= TRIALS


async def test_a_sigkill_costs_at_most_a_few_seconds_of_learning(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'agft.db'}"
    token = _token(url, "learn-node")
    http_port, grpc_port = free_port(), free_port()
    engine = create_engine(normalise_url(url))
    lost: list[int] = []  # windows learned but not in the saved state, per kill
    total = 0
    try:
        async with agent_at(f"127.0.0.1:{grpc_port}", "learn-node", token, instances=1):
            for _ in range(3):
                env = {"AGFT_POLICY": "agft", "AGFT_STATE_SAVE_INTERVAL_S": "1.0"}
                with server_process(url, http_port, grpc_port, **env) as proc:
                    await asyncio.sleep(4.0)  # 20 windows of 0.2 s
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                with engine.connect() as db:
                    # Windows the agent sent again (measured while no server ran, or
                    # decided and lost with the writer's queue) are stored as replayed,
                    # never learned from: only decided rows count here.
                    total = (
                        db.scalar(
                            select(func.count())
                            .select_from(Decision)
                            .where(Decision.reason != REPLAYED_REASON)
                        )
                        or 0
                    )
                    state = db.scalar(select(PolicyState.state))
                # The learner counts the windows it learned from, across restarts;
                # decisions persisted beyond that count were learned and then lost.
                saved = int(state["windows"]) if state else 0
                lost.append(total - saved - sum(lost))
    finally:
        engine.dispose()
    print(
        f"windows of learning lost per SIGKILL: {lost} of {total} decided "
        f"({sum(lost) / total:.0%} over {len(lost)} kills)"
    )
    # States are saved every 1 s at 5 windows/s, and written within the writer's 0.2 s:
    # a kill costs at most about 1.4 s of windows (7), never the tens a 30-decision
    # cadence lost. Below zero by a few: windows learned and saved whose decision rows
    # the kill took come back as replayed rows, which are not counted above.
    assert all(-3 <= n <= 8 for n in lost), lost


async def test_no_window_the_agent_measured_is_lost_to_sigkills(database_url: str) -> None:
    """Two SIGKILLs mid-stream, each with the server down for a while: every window the
    agent measured, before, during and after, is stored once (its writer's queue died
    with the server; the agent sent those windows again from its buffer)."""
    token = _token(database_url, "resend-node")
    http_port, grpc_port = free_port(), free_port()
    async with agent_at(f"127.0.0.1:{grpc_port}", "resend-node", token, instances=2) as ra:
        agent = ra.agent
        for trial in range(3):
            with server_process(database_url, http_port, grpc_port) as proc:
                measured = agent.windows_measured
                await eventually(
                    lambda m=measured: agent.windows_sent >= m + 10, 20, f"windows (trial {trial})"
                )
                if trial < 2:
                    proc.send_signal(signal.SIGKILL)  # its writer's queue dies with it
                    proc.wait(10)
                    await asyncio.sleep(1.0)  # down: the agent keeps measuring
                    continue
                # The last server stays: wait until it has stored what was measured by now.
                newest = agent.resend.last_seq
                await eventually(
                    lambda n=newest: agent.resend.stored_through >= n, 20, "the backlog stored"
                )
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)
        stored_through = agent.resend.stored_through
    engine = create_engine(normalise_url(database_url))
    try:
        with engine.connect() as db:
            rows = db.execute(
                select(
                    Decision.instance_id,
                    Decision.window_start,
                    Decision.window_end,
                    Decision.reason,
                ).order_by(Decision.instance_id, Decision.window_start)
            ).all()
    finally:
        engine.dispose()
    by_instance: dict[int, list[tuple[float, float]]] = {}
    for instance_id, start, end, _reason in rows:
        by_instance.setdefault(instance_id, []).append((start.timestamp(), end.timestamp()))
    replayed = sum(1 for r in rows if r.reason == REPLAYED_REASON)
    print(
        f"windows stored per instance: {[len(w) for w in by_instance.values()]}, "
        f"{replayed} of them sent again after a kill; stored through {stored_through}"
    )
    assert len(by_instance) == 2
    for windows in by_instance.values():
        # Every window measured up to the last one the server vouched for, exactly once:
        # no two share a start, and each starts where the one before it ended.
        assert len(windows) >= stored_through
        assert len({start for start, _ in windows}) == len(windows), "a window stored twice"
        gaps = [
            (prev_end, start)
            for (_, prev_end), (start, _) in itertools.pairwise(windows)
            if abs(start - prev_end) > 1e-3
        ]
        assert gaps == [], f"windows lost between {gaps[:3]}"
    assert replayed >= 2 * 2  # the outages' windows came through the buffer

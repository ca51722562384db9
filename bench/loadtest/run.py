"""One load-test run: a real server process, synthetic agents in other processes, a count.

The server is `agft server` as an admin starts it, on a fresh database (a new PostgreSQL
database on the given server, or a new SQLite file), over loopback gRPC. The agents run in
worker processes (bench/loadtest/agents.py). While they run, the server's CPU and peak RSS
are read from /proc; after, the writer is let drain and the database is counted: every
window the agents sent must be a decision row, every command the server sent a row, every
ack the agents sent an acknowledged command.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np
from sqlalchemy import create_engine, func, select, text

from bench.loadtest.agents import run_nodes
from server.auth.store import create_api_token, create_node_token
from server.store.database import make_engine, make_session_factory, normalise_url
from server.store.models import ClockCommand, Decision


@dataclass(frozen=True, slots=True)
class LoadSpec:
    nodes: int
    gpus_per_node: int = 8
    duration_s: float = 60.0
    window_s: float = 1.0
    agent_processes: int = 2
    database_url: str = ""  # postgresql://... (a fresh database is made on it) or "" SQLite
    seed: int = 0
    # The server's controller for every instance: agft (learns for minutes before it holds
    # locks), or static at a clock (a lock, so a lease renewal and an ack every window).
    policy: str = "agft"
    static_clock_mhz: int | None = None

    @property
    def instances(self) -> int:
        return self.nodes * self.gpus_per_node


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def fresh_database(url: str, workdir: Path) -> Iterator[str]:
    """A new, empty database for one run; dropped afterwards (PostgreSQL)."""
    if not url:
        path = workdir / f"loadtest-{os.getpid()}-{time.time_ns()}.db"
        yield f"sqlite:///{path}"
        with contextlib.suppress(OSError):
            path.unlink()
        return
    name = f"agft_loadtest_{os.getpid()}_{time.time_ns() % 10**9}"
    admin = create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(url)
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with admin.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :n AND pid <> pg_backend_pid()"
                ),
                {"n": name},
            )
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


class _Proc:
    """CPU seconds and peak RSS of a process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._tick = os.sysconf("SC_CLK_TCK")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        return int(match.group(1)) / 1024 if match else math.nan


def _quantile_ms(values: list[float], q: float) -> float | None:
    return float(np.quantile(values, q) * 1000) if values else None


def _histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Prometheus-style quantile of a cumulative histogram [(upper bound, count)]."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank, lower, seen = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            within = count - seen
            return lower + (upper - lower) * ((rank - seen) / within if within else 1.0)
        lower, seen = upper, count
    return lower


def _scrape(base: str, token: str) -> dict[str, Any]:
    body = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"}).text
    buckets: list[tuple[float, float]] = []
    out: dict[str, Any] = {}
    decisions = 0.0
    for line in body.splitlines():
        if line.startswith("agft_command_latency_seconds_bucket"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((math.inf if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
        elif line.startswith("agft_command_latency_max_seconds "):
            out["max_s"] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("agft_decide_seconds_count "):
            # Every window decided, whether or not its instance is still connected.
            decisions = float(line.rsplit(" ", 1)[1])
    out["buckets"] = buckets
    out["decisions"] = decisions
    return out


def run(spec: LoadSpec, workdir: Path, err: Any = sys.stderr) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    with fresh_database(spec.database_url, workdir) as url:
        return _run(spec, url, workdir, err)


def _run(spec: LoadSpec, url: str, workdir: Path, err: Any) -> dict[str, Any]:
    http_port, grpc_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "AGFT_WINDOW_S": str(spec.window_s),
        "AGFT_PERSIST_SPILL_PATH": str(workdir / "unwritten.jsonl"),
        "AGFT_PERSIST_SHUTDOWN_S": "60",
        "AGFT_POLICY": spec.policy,
    }
    if spec.static_clock_mhz is not None:
        env["AGFT_STATIC_CLOCK_MHZ"] = str(spec.static_clock_mhz)
    log = (workdir / f"server-{spec.instances}.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agft_cli.main",
            "server",
            "--port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--database-url",
            url,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{http_port}"
    try:
        _wait_healthy(base, server, 60)
        factory = make_session_factory(make_engine(url))
        nodes = [f"load-{n:05d}" for n in range(spec.nodes)]
        tokens = [(node, create_node_token(factory, node)[1]) for node in nodes]
        _, api_token = create_api_token(factory, "viewer", "loadtest")
        proc = _Proc(server.pid)
        print(
            f"loadtest: {spec.nodes} nodes x {spec.gpus_per_node} GPUs = {spec.instances} "
            f"instances for {spec.duration_s:g} s",
            file=err,
        )
        workers = max(1, min(spec.agent_processes, spec.nodes))
        shares = [tokens[i::workers] for i in range(workers)]
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            pending = [
                pool.apply_async(
                    run_nodes,
                    (
                        f"127.0.0.1:{grpc_port}",
                        share,
                        spec.gpus_per_node,
                        spec.window_s,
                        spec.duration_s,
                        spec.seed + i,
                    ),
                )
                for i, share in enumerate(shares)
            ]
            # Steady state: from when the ramp is over to the end of the windows.
            ramp = min(5.0, 0.01 * len(tokens) / workers) + 2.0
            time.sleep(ramp)
            cpu0, t0 = proc.cpu_s(), time.monotonic()
            time.sleep(max(0.0, spec.duration_s - 2.0))
            cpu1, t1 = proc.cpu_s(), time.monotonic()
            results = [p.get(timeout=spec.duration_s + 180) for p in pending]
        drained_s = _wait_drained(base, 180)
        scraped = _scrape(base, api_token)
        rss = proc.peak_rss_mb()
        counted = _count(url)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(90)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    sent = sum(r["windows_sent"] for r in results)
    commands = sum(r["commands"] for r in results)
    acks = sum(r["acks_sent"] for r in results)
    rtts = [x for r in results for x in r["rtt_s"]]
    buckets = scraped["buckets"]
    # Interpolating inside a bucket can pass the largest value seen: never report more.
    worst = scraped.get("max_s", math.inf)
    p50, p99 = (
        None if v is None else min(v, worst)
        for v in (_histogram_quantile(buckets, q) for q in (0.5, 0.99))
    )
    rows = counted["decisions"] + counted["commands"] + counted["acked"]
    return {
        "instances": spec.instances,
        "nodes": spec.nodes,
        "gpus_per_node": spec.gpus_per_node,
        "duration_s": spec.duration_s,
        "servers": 1,
        "policy": spec.policy
        + (f"@{spec.static_clock_mhz}" if spec.static_clock_mhz is not None else ""),
        "database": "postgresql" if url.startswith("postgresql") else "sqlite",
        "connected_nodes": sum(r["connected"] for r in results),
        "windows_sent": sent,
        "windows_per_s": round(counted["decisions"] / spec.duration_s, 1),
        "decision_p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
        "decision_p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
        "decision_max_ms": round(scraped.get("max_s", math.nan) * 1000, 2),
        "ack_rtt_p50_ms": _round(_quantile_ms(rtts, 0.5)),
        "ack_rtt_p99_ms": _round(_quantile_ms(rtts, 0.99)),
        "lost_windows": sent - counted["decisions"],
        "lost_decisions": int(scraped["decisions"]) - counted["decisions"],
        "lost_acks": acks - counted["acked"],
        "commands_received": commands,
        "agent_errors": sum(r["errors"] for r in results),
        "agent_unsent_messages": sum(r["unsent_messages"] for r in results),
        "agent_failures": [f for r in results for f in r["failures"]][:5],
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "server_rss_mb": round(rss, 1),
        "db_rows_per_s": round(rows / spec.duration_s, 1),
        "drain_s": round(drained_s, 1),
    }


def _round(value: float | None) -> float | None:
    return round(value, 2) if value is not None else None


def _wait_healthy(base: str, server: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}; see its log")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("the server did not become healthy")


def _wait_drained(base: str, timeout_s: float) -> float:
    """Seconds until the server's writer holds no row (or timeout_s)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            health = httpx.get(f"{base}/healthz", timeout=5).json()
            if health.get("rows_queued") == 0:
                return time.monotonic() - t0
        time.sleep(0.5)
    return math.inf


def _count(url: str) -> dict[str, int]:
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            decisions = conn.scalar(select(func.count()).select_from(Decision)) or 0
            commands = conn.scalar(select(func.count()).select_from(ClockCommand)) or 0
            acked = (
                conn.scalar(
                    select(func.count())
                    .select_from(ClockCommand)
                    .where(ClockCommand.acked_at.is_not(None))
                )
                or 0
            )
    finally:
        engine.dispose()
    return {"decisions": int(decisions), "commands": int(commands), "acked": int(acked)}

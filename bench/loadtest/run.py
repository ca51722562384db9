"""One load-test run: real server processes, synthetic agents in other processes, a count.

The server is `agft server` as an admin starts it (one, or several replicas on the one
database), on a fresh database (a new PostgreSQL database on the given server, or a new
SQLite file), over loopback gRPC. The agents run in worker processes
(bench/loadtest/agents.py). While they run, the servers' CPU and peak RSS are read from
/proc, and the first replica may be SIGKILLed; after, the writers are let drain and the
database is counted: every window the agents made must be stored once, every command the
server sent a row, every ack the agents sent an acknowledged command.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import threading
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
    # Server replicas on the one database; with kill_after_s, the first is SIGKILLed that
    # many seconds into the windows and its nodes must move to the others.
    servers: int = 1
    kill_after_s: float | None = None
    # Time an admin's reads meanwhile (they cost the server CPU too: off to measure
    # the fleet alone).
    api_probe: bool = True

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


@dataclass
class _Server:
    proc: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    log: Any
    killed_at: float | None = None  # wall time of its SIGKILL

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def alive(self) -> bool:
        return self.killed_at is None


def _start_server(spec: LoadSpec, url: str, workdir: Path, index: int) -> _Server:
    http_port, grpc_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "AGFT_WINDOW_S": str(spec.window_s),
        "AGFT_PERSIST_SPILL_PATH": str(workdir / f"unwritten-{index}.jsonl"),
        "AGFT_PERSIST_SHUTDOWN_S": "60",
        "AGFT_POLICY": spec.policy,
        "AGFT_REPLICA_ID": f"replica-{index}",
    }
    if spec.static_clock_mhz is not None:
        env["AGFT_STATIC_CLOCK_MHZ"] = str(spec.static_clock_mhz)
    suffix = f"-{index}" if spec.servers > 1 else ""
    log = (workdir / f"server-{spec.instances}{suffix}.log").open("w")
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
            "--database-url",
            url,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return _Server(proc, http_port, grpc_port, log)


class _ApiProbe(threading.Thread):
    """An admin's reads while the fleet runs: the instance list and one instance's newest
    decisions page, in turn, twice a second, timed from request to full answer."""

    def __init__(self, base: str, token: str) -> None:
        super().__init__(name="agft-loadtest-api", daemon=True)
        self._client = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        self._done = threading.Event()
        self.instances_s: list[float] = []
        self.decisions_s: list[float] = []
        self.failures = 0

    def run(self) -> None:
        rng = random.Random(0)
        ids: list[int] = []
        while not self._done.wait(0.5):
            try:
                started = time.perf_counter()
                listed = self._client.get("/api/v1/instances")
                listed.raise_for_status()
                ids = [i["id"] for i in listed.json()] or ids
                self.instances_s.append(time.perf_counter() - started)
                if ids:
                    started = time.perf_counter()
                    page = self._client.get(f"/api/v1/instances/{rng.choice(ids)}/decisions")
                    page.raise_for_status()
                    self.decisions_s.append(time.perf_counter() - started)
            except (httpx.HTTPError, ValueError):
                self.failures += 1  # a replica killed under it, a timeout: counted

    def stop(self) -> None:
        self._done.set()
        self.join(70)
        self._client.close()


def _run(spec: LoadSpec, url: str, workdir: Path, err: Any) -> dict[str, Any]:
    servers = [_start_server(spec, url, workdir, i) for i in range(spec.servers)]
    try:
        for server in servers:
            _wait_healthy(server.base, server.proc, 60)
        factory = make_session_factory(make_engine(url))
        nodes = [f"load-{n:05d}" for n in range(spec.nodes)]
        tokens = [(node, create_node_token(factory, node)[1]) for node in nodes]
        _, api_token = create_api_token(factory, "viewer", "loadtest")
        procs = [_Proc(s.proc.pid) for s in servers]
        print(
            f"loadtest: {spec.nodes} nodes x {spec.gpus_per_node} GPUs = {spec.instances} "
            f"instances for {spec.duration_s:g} s on {spec.servers} server(s)",
            file=err,
        )
        addresses = [f"127.0.0.1:{s.grpc_port}" for s in servers]
        workers = max(1, min(spec.agent_processes, spec.nodes))
        shares = [tokens[i::workers] for i in range(workers)]
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            pending = [
                pool.apply_async(
                    run_nodes,
                    (
                        addresses,
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
            began = time.monotonic()
            time.sleep(ramp)
            survivors = procs[1:] if spec.kill_after_s is not None else procs
            cpu0, t0 = sum(p.cpu_s() for p in survivors), time.monotonic()
            probe = _ApiProbe(servers[-1].base, api_token)  # a replica that stays
            if spec.api_probe:
                probe.start()
            if spec.kill_after_s is not None:
                time.sleep(max(0.0, began + 0.5 + spec.kill_after_s - time.monotonic()))
                servers[0].proc.send_signal(signal.SIGKILL)
                servers[0].killed_at = time.time()
                print(f"loadtest: replica 0 killed (SIGKILL) at {spec.kill_after_s:g} s", file=err)
            time.sleep(max(0.0, t0 + spec.duration_s - 2.0 - time.monotonic()))
            cpu1, t1 = sum(p.cpu_s() for p in survivors), time.monotonic()
            if spec.api_probe:
                probe.stop()
            results = [p.get(timeout=spec.duration_s + 240) for p in pending]
        live = [s for s in servers if s.alive]
        drained_s = max(_wait_drained(s.base, 180) for s in live)
        scraped = _merge([_scrape(s.base, api_token) for s in live])
        rss = max(p.peak_rss_mb() for p, s in zip(procs, servers, strict=True) if s.alive)
        counted = _count(url)
    finally:
        for server in servers:
            if server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
        for server in servers:
            try:
                server.proc.wait(90)
            except subprocess.TimeoutExpired:
                server.proc.kill()
            server.log.close()
    measured = sum(r["windows_measured"] for r in results)
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
    killed = servers[0].killed_at
    out = {
        "instances": spec.instances,
        "nodes": spec.nodes,
        "gpus_per_node": spec.gpus_per_node,
        "duration_s": spec.duration_s,
        "servers": spec.servers,
        "policy": spec.policy
        + (f"@{spec.static_clock_mhz}" if spec.static_clock_mhz is not None else ""),
        "database": "postgresql" if url.startswith("postgresql") else "sqlite",
        "connected_nodes": sum(r["connected"] for r in results),
        "windows_measured": measured,
        "windows_sent": sum(r["windows_sent"] for r in results),
        "windows_resent": sum(r["windows_resent"] for r in results),
        "windows_per_s": round(counted["windows"] / spec.duration_s, 1),
        "decision_p50_ms": round(p50 * 1000, 2) if p50 is not None else None,
        "decision_p99_ms": round(p99 * 1000, 2) if p99 is not None else None,
        "decision_max_ms": round(scraped.get("max_s", math.nan) * 1000, 2),
        "ack_rtt_p50_ms": _round(_quantile_ms(rtts, 0.5)),
        "ack_rtt_p99_ms": _round(_quantile_ms(rtts, 0.99)),
        # Every window an agent made must be stored, once.
        "lost_windows": measured - counted["windows"],
        "duplicate_windows": counted["decisions"] - counted["windows"],
        # The server's own count of windows it decided or recorded against its rows: a
        # killed replica's count died with it (its windows come back, re-sent), so with
        # a kill this is not known.
        "lost_decisions": int(scraped["decisions"]) - counted["decisions"]
        if killed is None
        else None,
        "lost_acks": acks - counted["acked"],
        "commands_received": commands,
        "agent_errors": sum(r["errors"] for r in results),
        "agent_unstored_windows": sum(r["unstored_windows"] for r in results),
        "agent_failures": [f for r in results for f in r["failures"]][:5],
        "api_instances_p99_ms": _round(_quantile_ms(probe.instances_s, 0.99)),
        "api_decisions_p99_ms": _round(_quantile_ms(probe.decisions_s, 0.99)),
        "api_failures": probe.failures,
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "server_rss_mb": round(rss, 1),
        "db_rows_per_s": round(rows / spec.duration_s, 1),
        "drain_s": round(drained_s, 1),
    }
    if killed is not None:
        regained = [x for r in results for x in r["regained_at"]]
        out["killed_after_s"] = spec.kill_after_s
        out["nodes_moved"] = len(regained)
        # From the kill to the last moved node's first window decided and stored again.
        out["failover_s"] = (
            round(max(regained) - killed, 2)
            if regained and all(x is not None for x in regained)
            else None
        )
        # Where it went, for the last node of each step: the lease and Hello (to Welcome),
        # the re-sent windows (to the first fresh one sent), deciding and storing it.
        for key, name in (("welcomed_at", "welcomed"), ("fresh_sent_at", "fresh_sent")):
            times = [x for r in results for x in r[key]]
            out[f"failover_{name}_s"] = (
                round(max(times) - killed, 2) if times and None not in times else None
            )
    return out


def _merge(scrapes: list[dict[str, Any]]) -> dict[str, Any]:
    """The replicas' /metrics as one: bucket counts and decisions summed, the worst max."""
    if len(scrapes) == 1:
        return scrapes[0]
    counts: dict[float, float] = {}
    for scraped in scrapes:
        for upper, count in scraped["buckets"]:
            counts[upper] = counts.get(upper, 0.0) + count
    return {
        "buckets": sorted(counts.items()),
        "decisions": sum(x["decisions"] for x in scrapes),
        "max_s": max(x.get("max_s", 0.0) for x in scrapes),
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
            windows = (
                conn.scalar(
                    select(func.count()).select_from(
                        select(Decision.instance_id, Decision.window_start).distinct().subquery()
                    )
                )
                or 0
            )
    finally:
        engine.dispose()
    return {
        "decisions": int(decisions),
        "windows": int(windows),
        "commands": int(commands),
        "acked": int(acked),
    }

"""`agft agent --check`: can this node run the agent? Read everything, change nothing.

Reads every NVML value the agent uses for each GPU and prints it with its unit, scrapes
each configured serving endpoint once, says for each GPU whether the agent could lock
its clocks (and why not), checks the token and TLS files, and tries a TCP connection to
the server. The GPU is only ever reached through ReadOnlyGpuBackend, so no clock, power
limit or mode can change. `--observe-s N` then runs the real agent on that read-only
backend for N seconds.

A *problem* is something the agent needs and does not have (a required NVML read, an
endpoint that does not answer, an unreadable token or TLS file): the check exits 1.
A *warning* is something it can run without (a monitor-only GPU, no token, a server
that does not answer yet): the check still exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO, TypeVar

import httpx

from agft.v1 import agent_pb2 as pb
from node_agent.capability import NO_PERMISSION, monitor_only_reason
from node_agent.config import TOKEN_ENV, AgentConfig, InstanceConfig
from node_agent.gpu.base import GpuBackend, GpuError, ThrottleReason
from node_agent.gpu.readonly import ReadOnlyGpuBackend
from node_agent.link_security import is_loopback
from node_agent.serving.scraper import ServingScraper

T = TypeVar("T")

CAP_SYS_ADMIN = 21  # linux/capability.h
ENERGY_INTERVAL_S = 0.25  # between the two energy reads that show the counter moving
LABEL_WIDTH = 27


@dataclass
class CheckResult:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def cap_sys_admin() -> bool | None:
    """Whether this process holds CAP_SYS_ADMIN (effective set); None when unknown.

    The NVIDIA driver's administrator test is capable(CAP_SYS_ADMIN), not uid 0
    (open-gpu-kernel-modules: os_is_administrator() -> NV_IS_SUSER()), so a root
    process without it is refused too, and a non-root one with it is allowed.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> CAP_SYS_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


class _Printer:
    def __init__(self, out: TextIO | None) -> None:
        self.out = sys.stdout if out is None else out

    def line(self, text: str = "") -> None:
        print(text, file=self.out)

    def row(self, label: str, value: str) -> None:
        first, *rest = value.split("\n")
        print(f"  {label:<{LABEL_WIDTH}}{first}", file=self.out)
        for more in rest:
            print(f"  {'':<{LABEL_WIDTH}}{more}", file=self.out)


def _err(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _range_mhz(clocks: Sequence[int]) -> str:
    if not clocks:
        return "none"
    if len(clocks) == 1:
        return f"1 clock: {clocks[0]} MHz"
    steps = sorted({a - b for a, b in zip(sorted(clocks)[1:], sorted(clocks), strict=False)})
    step = f", {steps[0]} MHz steps" if len(steps) == 1 else ""
    return f"{len(clocks)} clocks, {min(clocks)}-{max(clocks)} MHz{step}"


def throttle_names(reasons: ThrottleReason) -> str:
    names = [r.name for r in ThrottleReason if r and r in reasons and r.name]
    return f"{', '.join(names) if names else 'none'} ({int(reasons):#x})"


# ---- GPUs -------------------------------------------------------------------------------


def _gpu_section(
    p: _Printer,
    backend: ReadOnlyGpuBackend,
    index: int,
    users: list[str],
    energy_first: tuple[float, int] | None,
    needs_privilege: bool,
    result: CheckResult,
) -> None:
    used = bool(users)
    subject = f"GPU {index}"

    def read(
        label: str,
        fn: Callable[[], T],
        show: Callable[[T], str],
        required: bool,
        warn: bool = True,
    ) -> T | None:
        try:
            value = fn()
        except GpuError as err:
            if required and used:
                p.row(label, f"FAILED: {_err(err)}")
                result.problems.append(f"{subject}: {label}: {_err(err)}")
            elif required:
                p.row(label, f"unreadable: {_err(err)} (GPU not used by any instance)")
                result.warnings.append(f"{subject} (unused): {label}: {_err(err)}")
            else:
                p.row(label, f"unavailable: {_err(err)}")
                if used and warn:
                    result.warnings.append(f"{subject}: {label} unavailable: {_err(err)}")
            return None
        p.row(label, show(value))
        return value

    try:
        ident = backend.identity(index)
        title = f"{subject}: {ident.name} ({ident.uuid})"
    except GpuError as err:
        title = f"{subject}: identity unreadable: {_err(err)}"
        (result.problems if used else result.warnings).append(f"{subject}: identity: {_err(err)}")
    p.line(title + (f", used by {', '.join(users)}" if used else ", not used by any instance"))

    mem_clocks = read(
        "supported memory clocks",
        lambda: backend.supported_memory_clocks_mhz(index),
        _range_mhz,
        True,
    )
    mem_default = read(
        "default memory clock",
        lambda: backend.default_memory_clock_mhz(index),
        lambda v: f"{v} MHz",
        True,
    )
    if mem_default is not None:
        read(
            "supported SM clocks",
            lambda: backend.supported_sm_clocks_mhz(index, mem_default),
            lambda v: f"{_range_mhz(v)} (at memory {mem_default} MHz)",
            True,
        )
    elif mem_clocks:
        p.row("supported SM clocks", "not read: the default memory clock is unknown")
    read(
        "default SM clock", lambda: backend.default_sm_clock_mhz(index), lambda v: f"{v} MHz", True
    )
    read("power limit", lambda: backend.power_limit_mw(index), lambda v: f"{v / 1000:.1f} W", True)

    def energy_text(mj: int) -> str:
        text = f"{mj:,} mJ (counter since the driver loaded)"
        if energy_first is not None:
            t0, e0 = energy_first
            dt = time.monotonic() - t0
            if mj >= e0 and dt > 0:
                text += f"\n+{mj - e0:,} mJ in {dt:.2f} s = {(mj - e0) / 1000 / dt:.1f} W"
        return text

    read("total energy", lambda: backend.total_energy_mj(index), energy_text, True)
    read(
        "power (NVML average)",
        lambda: backend.power_usage_mw(index),
        lambda v: f"{v / 1000:.1f} W",
        False,
    )
    read(
        "power (instantaneous)",
        lambda: backend.instant_power_mw(index),
        lambda v: f"{v / 1000:.1f} W",
        False,
        warn=False,  # optional everywhere: the energy counter is the measure
    )
    read("SM clock", lambda: backend.sm_clock_mhz(index), lambda v: f"{v} MHz", False)
    read("memory clock", lambda: backend.memory_clock_mhz(index), lambda v: f"{v} MHz", False)
    read(
        "utilisation",
        lambda: backend.utilization(index),
        lambda u: f"GPU {u.gpu_pct:g} %, memory {u.memory_pct:g} %",
        False,
    )
    read("throttle reasons", lambda: backend.throttle_reasons(index), throttle_names, False)
    read(
        "MIG mode",
        lambda: backend.mig_enabled(index),
        lambda on: "enabled" if on else "disabled",
        False,
    )

    reason, basis = controllability(backend, index, needs_privilege)
    if reason:
        p.row("clock control", f"MONITOR-ONLY: {reason}\n({basis})")
        if used:
            result.warnings.append(f"{subject}: monitor-only: {reason}")
    else:
        p.row("clock control", f"controllable ({basis})")


def controllability(
    backend: ReadOnlyGpuBackend, index: int, needs_privilege: bool
) -> tuple[str, str]:
    """(monitor-only reason or "", how we know), without changing anything.

    node_agent.capability.monitor_only_reason probes permission with the start-up
    reset; on the read-only backend that reset is refused by us, so its answer to the
    probe is replaced by what this process's capabilities predict.
    """
    before = len(backend.refused)
    reason = monitor_only_reason(backend, index)
    if len(backend.refused) == before:
        return reason, "as the agent would find it"
    if not needs_privilege:
        return "", "simulated GPU: no privilege needed"
    has = cap_sys_admin()
    if has is None:
        has = os.geteuid() == 0
        how = "uid 0" if has else f"uid {os.geteuid()}, capabilities unknown"
    else:
        how = "this process has CAP_SYS_ADMIN" if has else "this process lacks CAP_SYS_ADMIN"
    basis = f"{how}; not probed: --check resets no clock"
    return ("" if has else NO_PERMISSION), basis


# ---- serving endpoints ------------------------------------------------------------------


def _gauges(w: pb.ServingWindow) -> str:
    parts = []
    if w.HasField("num_requests_running"):
        parts.append(f"{w.num_requests_running:g} running")
    if w.HasField("num_requests_waiting"):
        parts.append(f"{w.num_requests_waiting:g} waiting")
    if w.HasField("kv_cache_usage"):
        parts.append(f"KV cache {w.kv_cache_usage * 100:.1f} %")
    return ", ".join(parts)


async def _scrape_all(
    instances: Sequence[InstanceConfig], timeout_s: float
) -> list[tuple[pb.ServingWindow, float]]:
    async with httpx.AsyncClient() as http:

        async def one(inst: InstanceConfig) -> tuple[pb.ServingWindow, float]:
            start = time.monotonic()
            window = await ServingScraper(
                inst.metrics_url, inst.engine, http, timeout_s
            ).next_window()
            return window, time.monotonic() - start

        return await asyncio.gather(*(one(i) for i in instances))


def _serving_section(p: _Printer, config: AgentConfig, result: CheckResult) -> None:
    # One generous timeout for a one-off check; the agent itself uses scrape_timeout_s.
    timeout_s = max(2.0, config.scrape_timeout_s)
    windows = asyncio.run(_scrape_all(config.instances, timeout_s))
    for inst, (window, took_s) in zip(config.instances, windows, strict=True):
        p.line(f"instance {inst.name}")
        p.row("engine", inst.engine + (f", model {inst.model_name}" if inst.model_name else ""))
        p.row("GPUs", ", ".join(str(g) for g in inst.gpu_indices))
        if inst.match_labels:
            p.row("match labels", ", ".join(f'{k}="{v}"' for k, v in inst.match_labels))
        p.row("metrics URL", inst.metrics_url)
        if not window.available:
            p.row("scrape", f"FAILED after {took_s * 1000:.0f} ms: {window.error}")
            result.problems.append(f"instance {inst.name}: {inst.metrics_url}: {window.error}")
            continue
        gauges = _gauges(window)
        if gauges:
            p.row("scrape", f"ok in {took_s * 1000:.0f} ms: {gauges}")
        else:
            p.row(
                "scrape",
                f"ok in {took_s * 1000:.0f} ms, but none of {inst.engine}'s gauges are in it\n"
                f"(is it a {inst.engine} /metrics endpoint? is `engine` right?)",
            )
            result.warnings.append(
                f"instance {inst.name}: {inst.metrics_url} answers without {inst.engine} gauges"
            )


# ---- token, TLS, server --------------------------------------------------------------------


def _file_facts(path: str, *, secret: bool) -> tuple[bytes | None, str]:
    """(content or None, words): readable or why not; mode and owner, never the content."""
    try:
        data = Path(path).read_bytes()
        st = os.stat(path)
    except OSError as err:
        return None, f"{path}: cannot read: {err.strerror or err}"
    mode = stat.S_IMODE(st.st_mode)
    words = f"{path}: readable, {len(data.strip())} bytes, mode {mode:04o}, owner uid {st.st_uid}"
    if secret and mode & 0o077:
        words += "\nreadable by other users too: chmod 600 it (and chown it to the agent's user)"
    return data, words


def _auth_section(p: _Printer, config: AgentConfig, result: CheckResult) -> None:
    if config.token is not None:
        p.row("token", f"from {TOKEN_ENV} ({len(config.token)} characters, not shown)")
    elif config.token_file is not None:
        data, words = _file_facts(config.token_file, secret=True)
        if data is None:
            p.row("token", f"FAILED: {words}")
            result.problems.append(f"token_file {words}")
        elif not data.strip():
            p.row("token", f"FAILED: {config.token_file} is empty")
            result.problems.append(f"token_file {config.token_file} is empty")
        else:
            p.row("token", words.replace(" bytes,", " bytes (not shown),", 1))
            if "chmod 600" in words:
                result.warnings.append(f"token_file {config.token_file} is readable by other users")
    else:
        p.row("token", "FAILED: none configured (token_file or AGFT_AGENT_TOKEN)")
        result.problems.append(
            "no node token: the server refuses an agent without one; create it on the server "
            "with `agft node-token create NODE` and give it as token_file (or AGFT_AGENT_TOKEN)"
        )

    tls_files = (
        ("TLS CA file", config.tls_ca_file, b"CERTIFICATE", False),
        ("TLS client certificate", config.tls_cert_file, b"CERTIFICATE", False),
        ("TLS client key", config.tls_key_file, b"PRIVATE KEY", True),
    )
    if config.tls_ca_file is None:
        # The agent's own rule (node_agent.link_security): plaintext only to loopback.
        remote = ", ".join(a for a in config.servers if not is_loopback(a))
        if remote and config.allow_plaintext:
            p.row("TLS", f"off: plaintext to {remote} (allow_plaintext = true)")
            result.warnings.append(
                f"TLS is off towards {remote}: the node token crosses the network in "
                "clear (allow_plaintext); use tls_ca_file unless the network is wholly trusted"
            )
        elif remote:
            p.row("TLS", f"FAILED: off, and {remote} is not on loopback")
            result.problems.append(
                f"TLS is off and the server {remote} is not on loopback: the agent "
                "will not send its token in clear; set tls_ca_file (the server's CA)"
            )
        else:
            p.row("TLS", "off: plaintext gRPC (allowed to a loopback server only)")
        if config.tls_cert_file or config.tls_key_file:
            result.problems.append("tls_cert_file/tls_key_file need tls_ca_file (the server's CA)")
    for label, path, marker, secret in tls_files:
        if path is None:
            continue
        data, words = _file_facts(path, secret=secret)
        if data is None:
            p.row(label, f"FAILED: {words}")
            result.problems.append(f"{label} {words}")
        elif b"-----BEGIN" not in data or marker not in data:
            p.row(label, f"FAILED: {path} has no PEM {marker.decode().lower()}")
            result.problems.append(f"{label} {path} has no PEM {marker.decode().lower()}")
        else:
            p.row(label, words)
            if secret and "chmod 600" in words:
                result.warnings.append(f"{label} {path} is readable by other users")
    if config.tls_server_name:
        p.row("TLS server name", config.tls_server_name)


def _server_section(p: _Printer, config: AgentConfig, result: CheckResult) -> None:
    for address in config.servers:
        _try_server(p, address, result)


def _try_server(p: _Printer, address: str, result: CheckResult) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in host:
        p.row("server", f"{address} (not host:port: not tried)")
        return
    start = time.monotonic()
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3.0):
            pass
    except OSError as err:
        p.row("server", f"{address}: TCP connection failed: {err.strerror or err}")
        result.warnings.append(
            f"server {address} does not accept connections ({err.strerror or err}); "
            "the agent retries until it does"
        )
        return
    p.row(
        "server",
        f"{address}: TCP connection ok in {(time.monotonic() - start) * 1000:.1f} ms\n"
        "(the gRPC stream and the token are tried by --observe-s N)",
    )


# ---- the whole check ------------------------------------------------------------------------


def run_check(
    config: AgentConfig,
    backend: GpuBackend | None,
    *,
    source: str,
    needs_privilege: bool,
    backend_name: str = "NVML",
    backend_error: str = "",
    out: TextIO | None = None,
) -> tuple[CheckResult, ReadOnlyGpuBackend | None]:
    """Print the check; the result and the read-only backend (None when NVML failed)."""
    p = _Printer(out)
    result = CheckResult()
    readonly = backend if isinstance(backend, ReadOnlyGpuBackend) else None
    if backend is not None and readonly is None:
        readonly = ReadOnlyGpuBackend(backend)

    p.line("agft agent --check: reads only; no clock, power limit or mode is changed")
    p.row("node", config.node_id)
    p.row("server", config.server)
    p.row("configuration", source)
    p.row("GPU backend", backend_name)
    has = cap_sys_admin()
    p.row(
        "process",
        f"uid {os.geteuid()}, CAP_SYS_ADMIN {'unknown' if has is None else 'yes' if has else 'no'}",
    )
    p.row(
        "instances",
        "\n".join(f"{i.name} on GPU {'+'.join(map(str, i.gpu_indices))}" for i in config.instances)
        or "none",
    )
    if not config.instances:
        result.problems.append("no serving instance configured ([[instances]] or --instance)")

    p.line()
    if readonly is None:
        p.line(f"GPUs: FAILED: {backend_error}")
        result.problems.append(f"GPU backend: {backend_error}")
    else:
        _gpus(p, readonly, config, needs_privilege, result)

    p.line()
    p.line("Serving endpoints (one scrape each)")
    _serving_section(p, config, result)

    p.line()
    p.line("Server, token and TLS")
    _server_section(p, config, result)
    _auth_section(p, config, result)

    p.line()
    for problem in result.problems:
        p.line(f"problem: {problem}")
    for warning in result.warnings:
        p.line(f"warning: {warning}")
    if result.ok:
        p.line(f"agft agent --check: ready ({_count(result.warnings, 'warning')})")
    else:
        p.line(
            f"agft agent --check: NOT READY: {_count(result.problems, 'problem')}, "
            f"{_count(result.warnings, 'warning')}"
        )
    return result, readonly


def _count(items: Sequence[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _gpus(
    p: _Printer,
    backend: ReadOnlyGpuBackend,
    config: AgentConfig,
    needs_privilege: bool,
    result: CheckResult,
) -> None:
    try:
        count = backend.device_count()
    except GpuError as err:
        p.line(f"GPUs: FAILED to count: {_err(err)}")
        result.problems.append(f"GPU count: {_err(err)}")
        return
    users: dict[int, list[str]] = {i: [] for i in range(count)}
    for inst in config.instances:
        for index in inst.gpu_indices:
            if index >= count:
                result.problems.append(
                    f"instance {inst.name} uses GPU {index}, but this node has "
                    f"{count} GPU{'s' if count != 1 else ''}"
                    + (f" (0-{count - 1})" if count else "")
                )
            else:
                users[index].append(inst.name)
    p.line(f"GPUs: {count} on this node")
    first: dict[int, tuple[float, int]] = {}
    for index in range(count):
        with contextlib.suppress(GpuError):
            first[index] = (time.monotonic(), backend.total_energy_mj(index))
    if first:
        time.sleep(ENERGY_INTERVAL_S)  # so the energy read below shows the counter moving
    for index in range(count):
        p.line()
        _gpu_section(p, backend, index, users[index], first.get(index), needs_privilege, result)


# ---- observe-only run ---------------------------------------------------------------------


async def observe(
    config: AgentConfig,
    backend: ReadOnlyGpuBackend,
    seconds: float,
    *,
    out: TextIO | None = None,
) -> bool:
    """Run the real agent on the read-only backend for `seconds`; True if telemetry flowed."""
    from node_agent.agent import Agent

    p = _Printer(out)
    p.line()
    p.line(
        f"Observing for {seconds:g} s: the real agent on a read-only GPU backend; every clock "
        "write is refused (so the agent reports its GPUs as monitor-only)"
    )
    p.out.flush()
    before = len(backend.refused)
    agent = Agent(config, backend)
    handle = asyncio.get_running_loop().call_later(seconds, agent.stop)
    try:
        await agent.run()
    except Exception as err:  # the agent's own fatal errors (refused by the server, ...)
        p.line(f"agft agent --observe-s: FAILED: {_err(err)}")
        return False
    finally:
        handle.cancel()
    writes = [c for c in backend.refused[before:] if c.startswith("set_")]
    sessions = agent.sessions_started
    p.row("connected", f"{sessions} time{'s' if sessions != 1 else ''} to {config.server}")
    p.row("windows sent", str(agent.windows_sent))
    p.row("clock commands refused", f"{len(writes)} (observe-only)")
    p.row(
        "server errors",
        "\n".join(f"{e.code}: {e.message}" for e in agent.errors_received[:5]) or "none",
    )
    ok = sessions > 0 and agent.windows_sent > 0
    p.line(
        "agft agent --observe-s: "
        + (
            "ok: connected and streamed telemetry"
            if ok
            else "FAILED: no telemetry reached the server"
        )
    )
    return ok


def run_observe(
    config: AgentConfig, backend: ReadOnlyGpuBackend, seconds: float, *, out: TextIO | None = None
) -> bool:
    return asyncio.run(observe(config, backend, seconds, out=out))


@contextlib.contextmanager
def closing_backend(backend: GpuBackend | None) -> Iterator[None]:
    try:
        yield
    finally:
        if backend is not None:
            with contextlib.suppress(GpuError):
                backend.close()

"""One policy over one request stream on a fresh simulated node, window by window.

Each window: advance the virtual node, expire leases, close the window with the agent's
measurement code, hand the InstanceWindow to the server's decide_window, and apply the
resulting command with the agent's ClockController. Nothing here decides anything.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agft.v1 import agent_pb2 as pb
from bench.arrivals import Arrivals, FixedArrivals
from bench.front_door import FrontDoorSetup, VirtualFastLoop
from bench.telemetry import InstanceTelemetry
from node_agent.clocks import ClockController
from server.control.policy import ClockArms, Policy
from server.fleet.decider import decide_window
from server.fleet.runtime import InstanceRuntime
from server.settings import Settings
from sim.engine import EngineConfig, RequestRecord
from sim.node import SimulatedNode

# The server's own default lease: a benchmark renews exactly as the server would.
DEFAULT_LEASE_S = float(Settings.model_fields["lease_s"].default)

# Called at each decision instant, before decide_window, with the live node and the
# decision index: the oracle's hook for looking ahead (its CPU is counted as deciding).
Advisor = Callable[[SimulatedNode, int], None]
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class RunSpec:
    """What every policy of one benchmark runs on."""

    gpu: str
    model: str
    arrivals: Arrivals
    seed: int
    window_s: float
    windows: int  # fixed horizon: every policy is judged over the same virtual time
    lease_s: float = DEFAULT_LEASE_S

    @staticmethod
    def windows_for(arrivals: Arrivals, window_s: float, drain_s: float) -> int:
        """Windows to cover the last arrival plus a drain period."""
        return max(1, math.ceil((arrivals.last_s + drain_s) / window_s))


@dataclass(slots=True)
class PolicyRun:
    """What one run produced: per-window series and per-request records (times relative)."""

    policy: str
    window_s: float
    f_max_mhz: int
    energy_j: list[float] = field(default_factory=list)
    clock_in_force_mhz: list[int | None] = field(default_factory=list)  # None: default
    clock_chosen_mhz: list[int | None] = field(default_factory=list)
    decide_cpu_ns: list[int] = field(default_factory=list)
    # The server's estimate of each window's energy at default clocks (None: none made).
    default_energy_j: list[float | None] = field(default_factory=list)
    calibration_windows: int = 0  # windows the decider held at default for the estimate
    estimate_band: float | None = None  # the estimator's relative band at the end
    requests: list[RequestRecord] = field(default_factory=list)
    requests_arrived: int = 0
    commands_failed: int = 0
    wall_s: float = 0.0
    final_state: dict[str, Any] = field(default_factory=dict)  # the policy's state() at the end
    # The agent's fast loop (runs with a front door): boost seconds, polls, and its CPU.
    boosted_s: float = 0.0
    fast_loop_polls: int = 0
    fast_loop_cpu_ns: int = 0

    @property
    def decisions(self) -> int:
        return len(self.decide_cpu_ns)


def new_node(spec: RunSpec) -> SimulatedNode:
    # Keep every finished request: the benchmark's latency figures come from all of them.
    history = max(EngineConfig().completed_history, len(spec.arrivals) + 1)
    return SimulatedNode.create(
        gpu=spec.gpu,
        model=spec.model,
        instances=1,
        workload=FixedArrivals(spec.arrivals),
        clock="virtual",
        seed=spec.seed,
        engine_config=EngineConfig(completed_history=history),
    )


def instance_arms(node: SimulatedNode, gpus: tuple[int, ...]) -> ClockArms:
    """What the server derives from Hello (fleet/service.py): clocks every GPU of the group
    supports, and the lowest default clock among them."""
    b = node.backend
    per_gpu = [b.supported_sm_clocks_mhz(i, b.default_memory_clock_mhz(i)) for i in gpus]
    return ClockArms.intersect(per_gpu, min(b.default_sm_clock_mhz(i) for i in gpus))


def _apply(clocks: ClockController, command: pb.ServerMessage) -> bool:
    kind = command.WhichOneof("body")
    if kind == "set_clocks":
        return clocks.set_clocks(command.set_clocks).ok
    if kind == "reset_clocks":
        return clocks.reset_clocks(command.reset_clocks).ok
    raise ValueError(f"decide_window produced an unexpected {kind!r} message")


def run_policy(
    spec: RunSpec,
    policy: Policy,
    *,
    label: str | None = None,
    advisor: Advisor | None = None,
    progress: Progress | None = None,
    calibrate: bool = False,
    front_door: FrontDoorSetup | None = None,
) -> PolicyRun:
    """front_door: run the agent's fast loop on that signal (None: no fast loop)."""
    wall0 = time.perf_counter()
    label = label or policy.name
    node = new_node(spec)
    inst = node.instances[0]
    gpus = tuple(inst.gpu_indices)
    clocks = ClockController(node.backend, {inst.name: gpus}, monotonic=node.now, wall=node.now)
    clocks.reset_all("benchmark start")
    arms = instance_arms(node, gpus)
    runtime = InstanceRuntime(
        instance_id=1,
        name=inst.name,
        gpu_indices=gpus,
        arms=arms,
        policy=policy,
        calibrate=calibrate,
        front_door=front_door.counts if front_door is not None else 0,
    )
    telemetry = InstanceTelemetry(node, inst, clocks)
    telemetry.prime()
    run = PolicyRun(policy=label, window_s=spec.window_s, f_max_mhz=arms.supported_mhz[-1])
    fast = VirtualFastLoop(node, inst, clocks, front_door) if front_door is not None else None
    t0 = node.now()
    for k in range(1, spec.windows + 1):
        end = t0 + k * spec.window_s
        if fast is not None:
            fast.run_until(end)
        node.advance_to(end)
        clocks.expire_leases()
        window = telemetry.close_window()
        if fast is not None:
            reflex = fast.take_window()
            window.reflex.CopyFrom(reflex)
            run.boosted_s += reflex.boosted_s
            run.fast_loop_polls += reflex.polls
            run.fast_loop_cpu_ns += round(reflex.cpu_s * 1e9)
        cpu0 = time.process_time_ns()
        if advisor is not None:
            advisor(node, k)
        outcome = decide_window(
            runtime,
            window,
            now=datetime.fromtimestamp(node.now(), UTC),
            lease_s=spec.lease_s,
            # Deterministic ids: same seed, same messages; a digest of the label, as a
            # policy with tunables can be longer than a command id may be.
            command_id=f"{command_prefix(label)}-{k}",
        )
        run.decide_cpu_ns.append(time.process_time_ns() - cpu0)
        if outcome.command is not None and not _apply(clocks, outcome.command):
            run.commands_failed += 1
        energy = outcome.observation.energy_j
        if energy is None:
            # A benchmark that guessed a window's energy would not be worth reading.
            raise RuntimeError(f"window {k}: the simulated GPUs reported no energy")
        run.energy_j.append(energy)
        run.clock_in_force_mhz.append(outcome.observation.clock_in_force_mhz)
        run.clock_chosen_mhz.append(outcome.decision.sm_clock_mhz)
        run.default_energy_j.append(outcome.default_energy_j)
        if progress is not None:
            progress(k, spec.windows)
    run.requests = sorted(inst.completed_requests(), key=lambda r: r.request_id)
    run.requests = [_relative(r, t0) for r in run.requests]
    run.requests_arrived = int((spec.arrivals.t <= spec.windows * spec.window_s).sum())
    run.calibration_windows = runtime.estimator.forced
    run.estimate_band = runtime.estimator.errors.band
    run.final_state = runtime.policy.state()
    run.wall_s = time.perf_counter() - wall0
    return run


def command_prefix(label: str) -> str:
    """What a run's command ids start with: short and fixed, whatever the label."""
    return hashlib.sha256(label.encode()).hexdigest()[:16]


def _relative(r: RequestRecord, t0: float) -> RequestRecord:
    return RequestRecord(
        request_id=r.request_id,
        arrival_s=r.arrival_s - t0,
        first_scheduled_s=r.first_scheduled_s - t0,
        first_token_s=r.first_token_s - t0,
        finish_s=r.finish_s - t0,
        prompt_tokens=r.prompt_tokens,
        output_tokens=r.output_tokens,
        cached_tokens=r.cached_tokens,
        preemptions=r.preemptions,
        finished_reason=r.finished_reason,
    )

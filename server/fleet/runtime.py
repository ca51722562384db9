"""Live state of one connected agent and its serving instances."""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from agft.v1 import agent_pb2 as pb
from server.control.policy import ClockArms, Policy
from server.energy.estimator import DefaultEnergyEstimator
from server.slo.spec import SloSpec

MODES = ("auto", "observe", "pinned", "off")


@dataclass(slots=True)
class ReflexPlan:
    """What the server lets the agent's fast loop do, learnt from the windows.

    The boost is the top clock: the one default clocks run prompts at. The hold (for
    in-flight counts, which cannot tell a first token) follows the time prompts take to
    their first token, as the windows' TTFT histograms measure it with the reflex at work.
    """

    ttft_mean_s: float | None = None
    windows: int = 0

    def observe(self, ttft_mean_s: float | None) -> None:
        if ttft_mean_s is None or not math.isfinite(ttft_mean_s) or ttft_mean_s < 0:
            return
        self.windows += 1
        # A 30-window memory: long enough to ride out one window's few requests.
        alpha = max(1.0 / self.windows, 1.0 / 30)
        prior = self.ttft_mean_s if self.ttft_mean_s is not None else ttft_mean_s
        self.ttft_mean_s = prior + alpha * (ttft_mean_s - prior)

    def hold_s(self) -> float:
        """Twice the mean time to first token covers most of its spread, within bounds."""
        if self.ttft_mean_s is None:
            return REFLEX_HOLD_DEFAULT_S
        return min(REFLEX_HOLD_MAX_S, max(REFLEX_HOLD_MIN_S, 2.0 * self.ttft_mean_s))


# Before any window measured TTFT: a typical first-token time under light load.
REFLEX_HOLD_DEFAULT_S = 0.2
REFLEX_HOLD_MIN_S = 0.02
REFLEX_HOLD_MAX_S = 2.0


@dataclass(slots=True)
class InstanceRuntime:
    instance_id: int
    name: str
    gpu_indices: tuple[int, ...]
    arms: ClockArms
    policy: Policy
    # What we last told the agent: a locked clock, None for default, or "never told".
    last_sent_clock_mhz: int | None = None
    told_anything: bool = False
    decisions: int = 0
    decisions_saved: int = 0  # how many decisions the last saved state covers
    # GPU index -> why the agent cannot lock it; any entry makes the instance monitor-only.
    monitor_only: dict[int, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # The admin's mode: auto (the controller), observe (decide, never lock), pinned
    # (pinned_mhz, the admin's clock), off (default clocks).
    mode: str = "auto"
    pinned_mhz: int | None = None
    spec: SloSpec | None = None  # the SLO policy in force (None: outside any fleet)
    # What the API and /metrics show live, from the last window.
    last_window_at: datetime | None = None
    seen_saved: datetime | None = None  # the last_window_at stored as last_seen_at
    last_power_w: float | None = None
    last_clock_mhz: int | None = None
    last_reason: str = ""
    energy_total_j: float = 0.0
    # The counterfactual at default clocks behind every saving figure.
    estimator: DefaultEnergyEstimator = field(default_factory=DefaultEnergyEstimator)
    # May the decider hold default clocks for a window now and then to calibrate it?
    # (The live server: yes, in auto mode. Benchmark yardsticks that replay a fixed
    # schedule: no.)
    calibrate: bool = False
    calibration_sent: bool = False  # the window now running was held at default for it
    calibration_run: int = 0  # windows held in a row so far (CALIBRATION_WINDOWS at most)
    # The instance's front door as Hello reported it (pb.FrontDoorCount; 0: none). With
    # one, every lock carries a Reflex for the agent's fast loop.
    front_door: int = 0
    reflex: ReflexPlan = field(default_factory=ReflexPlan)

    @property
    def monitor_only_reason(self) -> str:
        return "; ".join(f"GPU {i}: {r}" for i, r in sorted(self.monitor_only.items()))


@dataclass(slots=True)
class AgentSession:
    node_id: str
    node_pk: int
    instances: dict[str, InstanceRuntime]
    outbox: asyncio.Queue[pb.ServerMessage | None] = field(default_factory=asyncio.Queue)
    # Commands sent and not yet acknowledged, so an ack can be checked (bounded).
    pending: OrderedDict[str, str] = field(default_factory=OrderedDict)
    pending_limit: int = 10_000
    token_id: str = ""  # the node token this stream authenticated with
    peer: str = ""
    last_message_at: float = field(default_factory=time.monotonic)
    # Command id -> when the telemetry that caused it was read (perf_counter), until the
    # command leaves through gRPC: the decision latency /metrics reports.
    born: dict[str, float] = field(default_factory=dict)
    boot_id: int = 0  # the agent process's (Hello.boot_id; 0: it numbers no windows)

    def touch(self) -> None:
        self.last_message_at = time.monotonic()

    def silent_for(self) -> float:
        return time.monotonic() - self.last_message_at

    def remember_command(self, command_id: str, instance: str) -> None:
        self.pending[command_id] = instance
        while len(self.pending) > self.pending_limit:
            self.pending.popitem(last=False)

    def send(self, message: pb.ServerMessage) -> None:
        self.outbox.put_nowait(message)

    def close(self) -> None:
        self.outbox.put_nowait(None)

"""What the fleet counts for /metrics and the dashboard: plain numbers, no Prometheus types.

Totals live per instance id for the life of the process, so a reconnect does not reset
them (a Prometheus counter must only go down when the server restarts).
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field

from server.control.observation import Observation
from server.control.policy import SloTargets

# SLO attainment is reported over the last this many windows (5 minutes at 1 s).
ATTAINMENT_WINDOWS = 300
DECIDE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
# Telemetry read off the stream to its command handed to gRPC: queueing on a busy event
# loop included, so up to seconds.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass(slots=True)
class InstanceTotals:
    gpu_energy_j: dict[int, float] = field(default_factory=dict)
    gpu_power_w: dict[int, float | None] = field(default_factory=dict)
    # Against default clocks (server/energy): the windows' net saving so far, and what
    # a Prometheus counter may show of it (its highest value: a counter never goes down,
    # so a window that cost more than default clocks is paid back before it rises again).
    net_saved_j: float = 0.0
    energy_saved_j: float = 0.0
    default_energy_j: float = 0.0  # measured or estimated, over windows that have it
    decisions: int = 0
    # Per window: (TTFTs within the objective, TTFTs, gaps within TPOT, gaps).
    _attainment: deque[tuple[float, int, float, int]] = field(
        default_factory=lambda: deque(maxlen=ATTAINMENT_WINDOWS)
    )

    def add_saving(self, energy_j: float | None, default_energy_j: float | None) -> None:
        if energy_j is None or default_energy_j is None:
            return
        self.default_energy_j += default_energy_j
        self.net_saved_j += default_energy_j - energy_j
        self.energy_saved_j = max(self.energy_saved_j, self.net_saved_j)

    def observe(self, obs: Observation, targets: SloTargets) -> None:
        for g in obs.gpus:
            if g.energy_j is not None:
                self.gpu_energy_j[g.index] = self.gpu_energy_j.get(g.index, 0.0) + g.energy_j
            self.gpu_power_w[g.index] = g.avg_power_w
        serving = obs.serving
        if serving is None:
            return
        ttft, itl = serving.ttft_s, serving.inter_token_latency_s
        self._attainment.append(
            (
                ttft.count_at_most(targets.ttft_s) if ttft else 0.0,
                ttft.count if ttft else 0,
                itl.count_at_most(targets.tpot_s) if itl else 0.0,
                itl.count if itl else 0,
            )
        )

    def attainment_counts(self) -> tuple[float, int, float, int]:
        """(TTFTs within, TTFTs, gaps within, gaps) over the recent windows."""
        return (
            sum(a[0] for a in self._attainment),
            sum(a[1] for a in self._attainment),
            sum(a[2] for a in self._attainment),
            sum(a[3] for a in self._attainment),
        )

    def attainment(self) -> dict[str, float | None]:
        """Share of first tokens within the TTFT objective and of token gaps within TPOT,
        over the recent windows (None: nothing observed)."""
        ttft_ok, ttft_n, itl_ok, itl_n = self.attainment_counts()
        return {
            "ttft": ttft_ok / ttft_n if ttft_n else None,
            "tpot": itl_ok / itl_n if itl_n else None,
        }


@dataclass(slots=True)
class DecideTimes:
    """A histogram of how long one window's decision took (telemetry in, command out)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DECIDE_BUCKETS_S) + 1))
    total_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(DECIDE_BUCKETS_S, seconds)] += 1
        self.total_s += seconds


@dataclass(slots=True)
class CommandLatency:
    """A histogram of telemetry read to command sent, per command, and the longest."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    total_s: float = 0.0
    max_s: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.total_s += seconds
        self.max_s = max(self.max_s, seconds)

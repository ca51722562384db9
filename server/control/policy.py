"""The policy interface every controller implements (static, rule, LinUCB, ...)."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from server.control.observation import Observation


@dataclass(frozen=True, slots=True)
class ClockArms:
    """The clocks an instance may be locked to: supported by every GPU of its TP group."""

    supported_mhz: tuple[int, ...]  # ascending
    default_mhz: int

    @classmethod
    def intersect(cls, per_gpu: Sequence[Sequence[int]], default_mhz: int) -> ClockArms:
        common = set(per_gpu[0]) if per_gpu else set()
        for clocks in per_gpu[1:]:
            common &= set(clocks)
        return cls(supported_mhz=tuple(sorted(common)), default_mhz=default_mhz)

    def snap_down(self, mhz: int) -> int | None:
        """The highest supported clock not above mhz (None if mhz is below them all)."""
        below = [c for c in self.supported_mhz if c <= mhz]
        return below[-1] if below else None


@dataclass(frozen=True, slots=True)
class SloTargets:
    """Latency objectives of an instance: a percentile of TTFT and of TPOT (inter-token)."""

    ttft_s: float = 0.5
    tpot_s: float = 0.05
    percentile: float = 90.0


@dataclass(frozen=True, slots=True)
class ClockDecision:
    """A policy's answer. sm_clock_mhz None means: default clocks (release any lock)."""

    sm_clock_mhz: int | None
    reason: str
    features: dict[str, float] = field(default_factory=dict)
    reward: float | None = None
    # May the agent's fast loop boost under this clock? A policy that knows first tokens
    # do not limit its choice says no: a boost would then only spend energy.
    boost_helps: bool = True


class Policy(abc.ABC):
    """One instance's controller. Pure: no I/O, no clocks of its own."""

    name: str

    @abc.abstractmethod
    def decide(self, observation: Observation, arms: ClockArms) -> ClockDecision: ...

    def beliefs(self, arms: ClockArms) -> dict[str, Any] | None:
        """What the controller believes now, for people (the dashboard): per clock, its
        predictions and whether it may choose it, and why. None: it has no model."""
        return None

    def state(self) -> dict[str, Any]:
        """Everything needed to continue learning after a restart (JSON-safe, no pickle)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what state() returned; unknown or malformed state raises ValueError."""
        if state:
            raise ValueError(f"{self.name} keeps no state")

    def resume(self) -> None:  # noqa: B027 - an optional hook; most policies keep nothing
        """Called after load_state with a state saved some time ago (a server restart, an
        agent's reconnect): forget what held only for the load of then. Default: nothing."""

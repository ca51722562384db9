"""The static policy: default clocks, or one fixed clock, for every window."""

from __future__ import annotations

from server.control.features import window_features
from server.control.observation import Observation
from server.control.policy import ClockArms, ClockDecision, Policy


class StaticPolicy(Policy):
    name = "static"

    def __init__(self, clock_mhz: int | None = None) -> None:
        self.clock_mhz = clock_mhz

    def decide(self, observation: Observation, arms: ClockArms) -> ClockDecision:
        features = window_features(observation)
        if self.clock_mhz is None:
            return ClockDecision(None, "static: default clocks", features)
        clock = arms.snap_down(self.clock_mhz)
        if clock is None:
            # A configured clock below every supported one must not stop control.
            return ClockDecision(None, "static: configured clock unsupported, default", features)
        return ClockDecision(clock, f"static: fixed {clock} MHz", features)

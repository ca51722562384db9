"""The `rule` baseline: a simple queue/utilisation governor, the kind an admin writes by hand.

Queue or high KV usage -> max clock at once; steady decode-only load -> a middle clock;
little work -> a low clock. No learning, no latency model.
"""

from __future__ import annotations

from server.control.features import window_features
from server.control.observation import Observation
from server.control.policy import ClockArms, ClockDecision, Policy


class RulePolicy(Policy):
    name = "rule"

    def __init__(
        self,
        busy_fraction: float = 0.80,
        light_fraction: float = 0.60,
        light_running: float = 4.0,
        queue_threshold: float = 1.0,
        kv_threshold: float = 0.85,
    ) -> None:
        self.busy_fraction = busy_fraction
        self.light_fraction = light_fraction
        self.light_running = light_running
        self.queue_threshold = queue_threshold
        self.kv_threshold = kv_threshold

    def decide(self, observation: Observation, arms: ClockArms) -> ClockDecision:
        features = window_features(observation)
        serving = observation.serving
        if serving is None or serving.num_requests_running is None:
            return ClockDecision(None, "rule: telemetry unknown, default clocks", features)
        waiting = serving.num_requests_waiting or 0.0
        kv = serving.kv_cache_usage or 0.0
        top = arms.supported_mhz[-1] if arms.supported_mhz else arms.default_mhz
        if waiting >= self.queue_threshold or kv >= self.kv_threshold:
            return ClockDecision(None, "rule: queue or KV pressure, default clocks", features)
        fraction = (
            self.light_fraction
            if serving.num_requests_running <= self.light_running
            else self.busy_fraction
        )
        clock = arms.snap_down(int(top * fraction))
        if clock is None:
            return ClockDecision(None, "rule: no clock low enough, default clocks", features)
        return ClockDecision(clock, f"rule: {fraction:.0%} of max", features)

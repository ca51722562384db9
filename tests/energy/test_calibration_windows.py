"""The decider holds default clocks for one window now and then, in auto mode only, and
tells the controller that window was a calibration, not its own choice."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from server.control.observation import Observation
from server.control.policy import ClockArms, ClockDecision
from server.control.static import StaticPolicy
from server.energy.estimator import (
    CALIBRATION_GAP,
    CALIBRATION_WINDOWS,
    EARLY_GAP,
    MIN_CALIBRATION,
)
from server.fleet.decider import decide_window
from server.fleet.runtime import InstanceRuntime
from tests.helpers.raw_agent import window

ARMS = ClockArms((1000, 1500, 1980), 1980)


class Recording(StaticPolicy):
    def __init__(self) -> None:
        super().__init__(1500)
        self.seen: list[Observation] = []

    def decide(self, observation: Observation, arms: ClockArms) -> ClockDecision:
        self.seen.append(observation)
        return super().decide(observation, arms)


def _run(runtime: InstanceRuntime, windows: int) -> list[str]:
    reasons = []
    for k in range(windows):
        outcome = decide_window(
            runtime,
            window(start=1000.0 + k, prompt_tokens=200),
            now=datetime.now(UTC),
            lease_s=5.0,
        )
        reasons.append(outcome.decision.reason)
    return reasons


def test_calibration_windows_in_auto_mode() -> None:
    policy = Recording()
    runtime = InstanceRuntime(1, "vllm-0", (0,), ARMS, policy, calibrate=True)
    windows = 2000  # long enough for the gap to grow to CALIBRATION_GAP
    reasons = _run(runtime, windows)
    held = [k for k, r in enumerate(reasons) if "calibrate the energy estimate" in r]
    starts = [k for k in held if k - 1 not in held]
    # Each calibration holds default clocks for CALIBRATION_WINDOWS windows in a row.
    assert held == [s + i for s in starts for i in range(CALIBRATION_WINDOWS)]
    assert len(starts) == runtime.estimator.forced == runtime.estimator.calibrations
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # EARLY_GAP until the model is ready, then as many windows as it has calibrations,
    # up to CALIBRATION_GAP.
    expected = [
        EARLY_GAP if done < MIN_CALIBRATION else min(done, CALIBRATION_GAP)
        for done in range(1, len(gaps) + 1)
    ]
    assert gaps == expected
    assert gaps.count(CALIBRATION_GAP) >= 2
    # The controller is told about each window held at default, and only those.
    flagged = [k for k, obs in enumerate(policy.seen) if obs.calibration]
    assert flagged == [k + 1 for k in held if k + 1 < windows]
    assert "controller: static" in reasons[held[0]]


def test_no_calibration_outside_auto_or_when_not_asked() -> None:
    for mode, calibrate in (("observe", True), ("pinned", True), ("off", True), ("auto", False)):
        runtime = InstanceRuntime(
            1, "vllm-0", (0,), ARMS, Recording(), calibrate=calibrate, mode=mode, pinned_mhz=1000
        )
        reasons = _run(runtime, 100)
        assert not any("calibrate" in r for r in reasons), mode
    monitor = InstanceRuntime(
        1, "vllm-0", (0,), ARMS, Recording(), calibrate=True, monitor_only={0: "no permission"}
    )
    assert not any("calibrate" in r for r in _run(monitor, 100))

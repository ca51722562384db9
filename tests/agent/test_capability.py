"""monitor_only_reason: MIG, permission, support, a lost GPU; only the start-up reset."""

from __future__ import annotations

from node_agent.capability import (
    MIG_ENABLED,
    NO_PERMISSION,
    NOT_SUPPORTED,
    monitor_only_reason,
)
from node_agent.gpu.base import (
    GpuError,
    GpuNotSupportedError,
    GpuPermissionError,
    GpuUnavailableError,
)
from tests.fakes.backend import FakeBackend


def test_a_gpu_whose_reset_works_is_controllable_and_is_reset() -> None:
    b = FakeBackend()
    b.locks[0] = (210, 900)  # a foreign lock left by someone else
    assert monitor_only_reason(b, 0) == ""
    assert b.locks == {}
    # Detection never sets a clock: the reset the agent does at start is the probe.
    assert b.calls["set_locked_sm_clocks_mhz"] == 0


def test_mig_is_monitor_only_without_touching_clocks() -> None:
    b = FakeBackend(gpus=2)
    b.mig.add(1)
    assert monitor_only_reason(b, 1) == MIG_ENABLED
    assert b.calls["reset_locked_sm_clocks"] == 0
    assert monitor_only_reason(b, 0) == ""


def test_permission_and_support_come_from_the_reset() -> None:
    b = FakeBackend()
    b.errors["reset_locked_sm_clocks", 0] = GpuPermissionError("Insufficient Permissions")
    assert monitor_only_reason(b, 0) == NO_PERMISSION
    assert "CAP_SYS_ADMIN" in NO_PERMISSION
    b.errors["reset_locked_sm_clocks", 0] = GpuNotSupportedError("Not Supported")
    assert monitor_only_reason(b, 0) == NOT_SUPPORTED
    assert b.calls["set_locked_sm_clocks_mhz"] == 0


def test_a_lost_gpu_says_so() -> None:
    b = FakeBackend()
    b.errors["mig_enabled", 0] = GpuUnavailableError("GPU is lost")
    assert monitor_only_reason(b, 0) == "GPU unavailable: GPU is lost"


def test_an_unclassified_reset_failure_is_not_trusted_with_a_lock() -> None:
    b = FakeBackend()
    b.errors["reset_locked_sm_clocks", 0] = GpuError("Unknown Error")
    reason = monitor_only_reason(b, 0)
    assert reason and "Unknown Error" in reason


def test_a_mig_query_that_fails_oddly_still_probes_the_reset() -> None:
    b = FakeBackend()
    b.errors["mig_enabled", 0] = GpuError("Timeout")
    assert monitor_only_reason(b, 0) == ""
    assert b.calls["reset_locked_sm_clocks"] == 1

"""The harness drives the server's decide_window and the agent's ClockController, window by
window, on the simulated node; nothing in bench/ decides or applies clocks itself."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

import bench.harness as harness
from agft.v1 import agent_pb2 as pb
from bench.arrivals import Arrivals
from bench.harness import RunSpec, command_prefix, run_policy
from server.control.registry import make_policy
from server.fleet.decider import decide_window
from sim.node import SimulatedNode


class _Spy:
    """Records every InstanceWindow and command that passes through decide_window."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.windows: list[pb.InstanceWindow] = []
        self.commands: list[pb.ServerMessage | None] = []

        def spy(runtime: Any, window: pb.InstanceWindow, **kwargs: Any) -> Any:
            outcome = decide_window(runtime, window, **kwargs)
            self.windows.append(window)
            self.commands.append(outcome.command)
            return outcome

        monkeypatch.setattr(harness, "decide_window", spy)


def _last_node() -> tuple[list[SimulatedNode], harness.Advisor]:
    seen: list[SimulatedNode] = []

    def advisor(node: SimulatedNode, window: int) -> None:
        if not seen:
            seen.append(node)

    return seen, advisor


def test_static_policy_locks_the_simulated_gpu_through_decide_window(
    spec_90s: RunSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _Spy(monkeypatch)
    spec = spec_90s
    nodes, advisor = _last_node()
    run = run_policy(spec, make_policy("static", static_clock_mhz=1200), advisor=advisor)

    assert len(spy.windows) == spec.windows == run.decisions
    # The GPU itself is locked, as read back through the backend the agent uses.
    lock = nodes[0].backend.locked_sm_clocks_mhz(0)
    assert lock is not None and lock[1] == 1200 and lock[0] < 1200  # range: idle may drop
    # Every window after the first ran under the lock, as the agent's sampler saw it.
    assert run.clock_in_force_mhz[0] is None
    assert set(run.clock_in_force_mhz[1:]) == {1200}
    # Each command is a SetClocks renewal; each window names the lease in force, as the
    # agent does (the first window precedes any command).
    assert all(c is not None and c.WhichOneof("body") == "set_clocks" for c in spy.commands)
    assert spy.windows[0].command_id == ""
    assert [w.command_id for w in spy.windows[1:]] == [
        f"{command_prefix('static')}-{k}" for k in range(1, spec.windows)
    ]
    assert run.commands_failed == 0


def test_a_policy_with_a_long_label_runs(spec_90s: RunSpec) -> None:
    # A label with tunables is longer than a command id may be (64 characters): the ids
    # carry a digest of it, and every lock still lands.
    label = "agft:max_slowdown=0.1:down_step_mhz=300:dwell_windows=0:latency_alpha=0.25"
    run = run_policy(spec_90s, make_policy("static", static_clock_mhz=1200), label=label)
    assert run.commands_failed == 0
    assert set(run.clock_in_force_mhz[1:]) == {1200}


def test_default_policy_never_locks(spec_90s: RunSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = _Spy(monkeypatch)
    nodes, advisor = _last_node()
    run = run_policy(spec_90s, make_policy("default"), advisor=advisor)

    assert nodes[0].backend.locked_sm_clocks_mhz(0) is None
    assert set(run.clock_in_force_mhz) == {None}
    # Only the first decision tells the agent anything (an explicit reset); then silence.
    sent = [c for c in spy.commands if c is not None]
    assert len(sent) == 1 and sent[0].WhichOneof("body") == "reset_clocks"


def test_a_lease_that_runs_out_before_the_next_window_resets_the_gpu(spec_90s: RunSpec) -> None:
    # Lease shorter than the window: the agent's lease check resets the GPU before each
    # window closes, so the sampler never finds the lock.
    spec = replace(spec_90s, lease_s=0.5)
    run = run_policy(spec, make_policy("static", static_clock_mhz=1200))
    assert set(run.clock_in_force_mhz) == {None}
    assert set(run.clock_chosen_mhz) == {1200}


def test_every_request_of_the_stream_completes_and_energy_is_measured(
    spec_90s: RunSpec, arrivals_90s: Arrivals
) -> None:
    run = run_policy(spec_90s, make_policy("default"))
    assert run.requests_arrived == len(arrivals_90s)
    assert len(run.requests) == len(arrivals_90s)
    assert all(e > 0 for e in run.energy_j)
    # Records are relative to the run's start, like the arrivals.
    assert run.requests[0].arrival_s == pytest.approx(float(arrivals_90s.t[0]), abs=1e-6)

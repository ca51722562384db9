"""One window in, one decision (and maybe one command) out: the server's whole per-window logic.

Pure and synchronous, so the live server and the offline benchmark (`agft bench`) run
exactly the same code on exactly the same telemetry messages.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from agft.v1 import agent_pb2 as pb
from server.control.features import window_features
from server.control.observation import HistogramDelta, Observation
from server.control.policy import ClockArms, ClockDecision
from server.energy.estimator import CALIBRATION_WINDOWS, FloatArray, features
from server.fleet import validation
from server.fleet.runtime import InstanceRuntime
from server.store.rows import AckRow, CommandRow, DecisionRow, RecoveredAck

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    observation: Observation
    decision: ClockDecision
    command: pb.ServerMessage | None
    decision_row: DecisionRow
    command_row: CommandRow | None
    # The window's energy at default clocks: measured if it ran there, else estimated
    # (None: unknown or not calibrated yet).
    default_energy_j: float | None = None


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _q(h: HistogramDelta | None, q: float) -> float | None:
    return h.quantile(q) if h is not None else None


def decide_window(
    runtime: InstanceRuntime,
    window: pb.InstanceWindow,
    *,
    now: datetime,
    lease_s: float,
    command_id: str | None = None,
) -> Outcome:
    """Validate, decide, and build the command. Raises InvalidMessageError on bad input."""
    obs = validation.observation(window, runtime.gpu_indices)
    if runtime.calibration_sent:
        obs = dataclasses.replace(obs, calibration=True)
        runtime.calibration_sent = False
    if runtime.mode == "off":
        # The admin turned control off: the controller is not even asked.
        decision = ClockDecision(None, "mode off: default clocks", window_features(obs))
    else:
        decision = _controller_decision(runtime, obs)
    if runtime.mode == "pinned" and runtime.pinned_mhz is not None:
        decision = dataclasses.replace(
            decision,
            sm_clock_mhz=runtime.pinned_mhz,
            reason=f"pinned at {runtime.pinned_mhz} MHz by an admin; controller: {decision.reason}",
        )
    held = runtime.calibration_run  # forced windows in a row, the one just ended last
    # Only the last window of a calibration run teaches the model: the first ones still
    # drain the queue the lower clock built, and draw less power per token than default
    # clocks do in their own steady state.
    phi = _features(obs)
    default_energy_j = _default_energy(runtime, obs, phi, steady=held >= CALIBRATION_WINDOWS)
    eligible = (
        runtime.calibrate
        and runtime.mode == "auto"
        and not runtime.monitor_only
        and decision.sm_clock_mhz is not None
    )
    if eligible and (
        0 < held < CALIBRATION_WINDOWS or (held == 0 and runtime.estimator.wants_calibration(phi))
    ):
        if held == 0:
            runtime.estimator.note_forced()
        runtime.calibration_sent = True
        runtime.calibration_run = held + 1
        decision = dataclasses.replace(
            decision,
            sm_clock_mhz=None,
            reason=f"default clocks for {CALIBRATION_WINDOWS} windows to calibrate the "
            f"energy estimate; controller: {decision.reason}",
        )
    else:
        runtime.calibration_run = 0
    if runtime.monitor_only:
        # Decided and recorded (what we would do), never sent: the agent cannot lock
        # these GPUs, and asking again would only make it refuse again.
        command, command_row = None, None
        decision = dataclasses.replace(
            decision,
            reason=f"monitor-only ({runtime.monitor_only_reason}); would: {decision.reason}",
        )
    elif runtime.mode == "observe":
        # Recorded as what the controller would do; the GPU stays at default clocks (a
        # lock still held from before is released).
        decision = dataclasses.replace(decision, reason=f"observe; would: {decision.reason}")
        command, command_row = _command_for(
            runtime, ClockDecision(None, "observe: default clocks"), now, lease_s, command_id
        )
    else:
        command, command_row = _command_for(runtime, decision, now, lease_s, command_id)
    runtime.decisions += 1
    _remember(runtime, obs, decision, now)
    if runtime.front_door and obs.serving is not None and obs.serving.ttft_s is not None:
        runtime.reflex.observe(obs.serving.ttft_s.mean())  # the fast loop's hold
    row = _decision_row(runtime, obs, decision, now, command_row, default_energy_j)
    return Outcome(obs, decision, command, row, command_row, default_energy_j)


REPLAYED_REASON = "sent again after a reconnect: recorded, not decided (its moment passed)"


def record_window(runtime: InstanceRuntime, window: pb.InstanceWindow, *, now: datetime) -> Outcome:
    """A window sent again after a reconnect (or measured while no server was reachable):
    stored as measured, with its default-clock energy, but nobody decides on it. A
    command made from it would be stale, and one already sent for it must not be applied
    twice; the controller does not learn from it, as it learnt from it once already or
    the window is older than what it holds. Raises InvalidMessageError on bad input."""
    obs = validation.observation(window, runtime.gpu_indices)
    decision = ClockDecision(None, REPLAYED_REASON, window_features(obs))
    default_energy_j = _default_energy(runtime, obs, _features(obs), steady=False)
    row = _decision_row(runtime, obs, decision, now, None, default_energy_j)
    return Outcome(obs, decision, None, row, None, default_energy_j)


RECOVERED_REASON = "stored from the agent's ack: the replica that sent it stopped first"


def recovered_command_row(
    ack_row: AckRow, ack: pb.CommandAck, runtime: InstanceRuntime, now: datetime
) -> RecoveredAck:
    """A command row rebuilt from its ack (validated by validation.ack_row), for a command
    whose replica died before writing it: what the agent applied, when it applied it."""
    locks = [
        (a.locked_min_sm_clock_mhz, a.locked_max_sm_clock_mhz)
        for a in ack_row.applied
        if a.locked_max_sm_clock_mhz is not None
    ]
    applied_at = ack.applied_at_s
    issued = _ts(applied_at) if math.isfinite(applied_at) and 0 < applied_at < 4.1e9 else now
    command = CommandRow(
        id=ack_row.id,
        instance_id=runtime.instance_id,
        kind="set" if locks else "reset",
        reason=RECOVERED_REASON,
        issued_at=issued,
        min_sm_clock_mhz=min((lo for lo, _ in locks if lo is not None), default=None),
        max_sm_clock_mhz=min((hi for _, hi in locks if hi is not None), default=None),
    )
    return RecoveredAck(command, ack_row.at(now))


def _decision_row(
    runtime: InstanceRuntime,
    obs: Observation,
    decision: ClockDecision,
    now: datetime,
    command_row: CommandRow | None,
    default_energy_j: float | None,
) -> DecisionRow:
    serving = obs.serving
    return DecisionRow(
        instance_id=runtime.instance_id,
        decided_at=now,
        window_start=_ts(obs.window_start_s),
        window_end=_ts(obs.window_end_s),
        policy=runtime.policy.name,
        slo_policy_id=runtime.spec.id if runtime.spec is not None else None,
        mode=runtime.mode,
        features=finite_features(decision.features),
        clock_in_force_mhz=obs.clock_in_force_mhz,
        clock_chosen_mhz=decision.sm_clock_mhz,
        reason=decision.reason[:255],
        command_id=command_row.id if command_row else None,
        reward=decision.reward,
        energy_j=obs.energy_j,
        prompt_tokens=serving.prompt_tokens if serving else None,
        generation_tokens=serving.generation_tokens if serving else None,
        ttft_p50_s=_q(serving.ttft_s, 0.5) if serving else None,
        ttft_p90_s=_q(serving.ttft_s, 0.9) if serving else None,
        itl_p50_s=_q(serving.inter_token_latency_s, 0.5) if serving else None,
        itl_p90_s=_q(serving.inter_token_latency_s, 0.9) if serving else None,
        default_energy_j=default_energy_j,
    )


def _controller_decision(runtime: InstanceRuntime, obs: Observation) -> ClockDecision:
    decision = runtime.policy.decide(obs, runtime.arms)
    missing = unknown_inputs(obs)
    if decision.sm_clock_mhz is not None and missing:
        # Unknown is not idle, whatever the policy thinks: a clock is lowered only on a
        # window whose load and energy were both measured.
        decision = ClockDecision(
            None,
            f"{runtime.policy.name}: {', '.join(missing)} unknown; default clocks",
            decision.features,
            decision.reward,
        )
    if (
        decision.sm_clock_mhz is not None
        and decision.sm_clock_mhz not in runtime.arms.supported_mhz
    ):
        # A policy bug must never reach a GPU.
        log.error("policy %s chose unsupported clock %s", runtime.policy.name, decision)
        decision = ClockDecision(
            None, "policy chose an unsupported clock; default", decision.features
        )
    return decision


def _remember(
    runtime: InstanceRuntime, obs: Observation, decision: ClockDecision, now: datetime
) -> None:
    """What the API and /metrics show of the instance now."""
    runtime.last_window_at = now
    runtime.last_reason = decision.reason
    # The clock the GPUs ran at when the window closed (the slowest of a TP group).
    clocks = [g.sm_clock_mhz for g in obs.gpus if g.sm_clock_mhz is not None]
    runtime.last_clock_mhz = min(clocks) if clocks else None
    if obs.energy_j is not None:
        runtime.energy_total_j += obs.energy_j
        runtime.last_power_w = obs.energy_j / max(obs.duration_s, 1e-6)
    else:
        runtime.last_power_w = None


def command_now(
    runtime: InstanceRuntime, clock: int | None, reason: str, *, now: datetime, lease_s: float
) -> tuple[pb.ServerMessage | None, CommandRow | None]:
    """A command sent at once, outside the window cadence (an admin's mode change)."""
    if runtime.monitor_only:
        return None, None
    return _command_for(runtime, ClockDecision(clock, reason), now, lease_s, None)


def _features(obs: Observation) -> FloatArray | None:
    serving = obs.serving
    if serving is None:
        return None
    return features(serving.prompt_tokens, serving.generation_tokens, obs.duration_s)


def ran_at_default(obs: Observation, arms: ClockArms) -> bool:
    """No lock, or one whose ceiling is the top clock: under load the same as default."""
    top = arms.supported_mhz[-1] if arms.supported_mhz else arms.default_mhz
    return obs.clock_in_force_mhz is None or obs.clock_in_force_mhz >= top


def _default_energy(
    runtime: InstanceRuntime, obs: Observation, phi: FloatArray | None, *, steady: bool
) -> float | None:
    # Windows the controller itself sent to default clocks are not a fair sample (it does
    # so under congestion); calibration windows and the admin's modes are.
    representative = (obs.calibration and steady) or runtime.mode in ("observe", "off")
    return runtime.estimator.observe(
        phi,
        obs.energy_j,
        obs.duration_s,
        ran_at_default(obs, runtime.arms),
        representative=representative,
    )


def unknown_inputs(obs: Observation) -> list[str]:
    """What a window lacks that any decision to lower a clock must rest on."""
    missing = []
    serving = obs.serving
    if serving is None:
        missing.append("serving metrics")
    else:
        for name, value in (
            ("running requests", serving.num_requests_running),
            ("waiting requests", serving.num_requests_waiting),
            ("KV-cache usage", serving.kv_cache_usage),
        ):
            if value is None:
                missing.append(name)
    if obs.energy_j is None:
        missing.append("GPU energy")
    return missing


def finite_features(features: dict[str, float]) -> dict[str, float | None]:
    """JSON has no NaN or infinity: a feature that is not a finite number is stored unknown."""
    return {k: (v if math.isfinite(v) else None) for k, v in features.items()}


def lock_range(arms: ClockArms, clock: int) -> tuple[int, int]:
    """The SetClocks range for a chosen clock: [lowest supported, chosen].

    Under load the GPU runs at the chosen clock; idle, it may drop as its governor likes.
    A single-clock lock would hold an idle GPU at that clock and burn power between bursts.
    """
    floor = min(arms.supported_mhz[0], clock) if arms.supported_mhz else clock
    return floor, clock


def _reflex(runtime: InstanceRuntime, clock: int) -> pb.Reflex | None:
    """The fast loop's bounds under a lock at clock: boost to the top clock while prompts
    wait. None without a front door, or when the lock already is the top clock."""
    top = runtime.arms.supported_mhz[-1] if runtime.arms.supported_mhz else clock
    if not runtime.front_door or top <= clock:
        return None
    return pb.Reflex(boost_sm_clock_mhz=top, hold_s=runtime.reflex.hold_s())


def _command_for(
    runtime: InstanceRuntime,
    decision: ClockDecision,
    now: datetime,
    lease_s: float,
    command_id: str | None,
) -> tuple[pb.ServerMessage | None, CommandRow | None]:
    """A command when the clock changes, and a renewal of every lease each window."""
    clock = decision.sm_clock_mhz
    if clock is None and runtime.told_anything and runtime.last_sent_clock_mhz is None:
        return None, None  # already at default; a reset needs no renewal
    command_id = command_id or uuid.uuid4().hex
    reason = decision.reason[:255]
    row: CommandRow
    if clock is None:
        msg = pb.ServerMessage(
            reset_clocks=pb.ResetClocks(
                command_id=command_id, instance=runtime.name, reason=decision.reason
            )
        )
        row = CommandRow(command_id, runtime.instance_id, "reset", reason, now)
    else:
        floor, clock = lock_range(runtime.arms, clock)
        expires = now.timestamp() + lease_s
        msg = pb.ServerMessage(
            set_clocks=pb.SetClocks(
                command_id=command_id,
                instance=runtime.name,
                min_sm_clock_mhz=floor,
                max_sm_clock_mhz=clock,
                lease_s=lease_s,
                expires_at_s=expires,
                reason=decision.reason,
                reflex=_reflex(runtime, clock) if decision.boost_helps else None,
            )
        )
        row = CommandRow(
            command_id,
            runtime.instance_id,
            "set",
            reason,
            now,
            min_sm_clock_mhz=floor,
            max_sm_clock_mhz=clock,
            lease_s=lease_s,
            expires_at=_ts(expires),
        )
    runtime.last_sent_clock_mhz = clock
    runtime.told_anything = True
    return msg, row

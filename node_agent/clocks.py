"""Applying clock commands to a serving instance's GPUs, under leases.

A tensor-parallel group moves together: if any GPU refuses the lock, the whole
group is reset to default, so a group never runs at mixed clocks by our hand.

Everything a command carries comes from whatever answers as the server, so it is
bounded before any GPU is touched: a finite lease no longer than max_lease_s, clocks
from the GPU's supported lists. A GPU the agent cannot control (MIG, no permission,
unsupported, lost) is monitor-only: commands for its instance are refused at once,
without calling NVML, so a refusal cannot turn into a retry storm against the driver.

Commands and lease expiry run in different worker threads. One re-entrant lock
covers each whole operation (the NVML writes and the lease bookkeeping together), so
an expiry can never reset a group between a command's lock and its lease grant, and
no lock outlives the lease that covers it.

The fast loop (node_agent/reflex.py) moves a lease's ceiling between the command's clock
and the boost the command allows, through `boost`. It acts only inside a lease that
carries a Reflex: never below what the command set, never without a lease, so a lease
running out still resets the group to default.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping

from agft.v1 import agent_pb2 as pb
from node_agent.capability import monitor_only_reason, reason_for_error
from node_agent.gpu.base import (
    GpuBackend,
    GpuError,
    GpuNotSupportedError,
)
from node_agent.lease import Lease, LeaseTable

log = logging.getLogger(__name__)

# The longest a rise of an in-flight count may hold the boost: longer than any first token
# worth waiting for, short enough that a bad value cannot pin a GPU high for long.
MAX_HOLD_S = 10.0


class _Refused(Exception):
    """A command that must not reach any GPU; the message goes into the ack."""


class ClockController:
    def __init__(
        self,
        backend: GpuBackend,
        instance_gpus: Mapping[str, tuple[int, ...]],
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        *,
        max_lease_s: float = math.inf,
    ) -> None:
        self._backend = backend
        self._instance_gpus = dict(instance_gpus)
        self._gpus = tuple(sorted({i for g in self._instance_gpus.values() for i in g}))
        self._monotonic = monotonic
        self._wall = wall
        self._max_lease_s = max_lease_s
        self._mutex = threading.RLock()
        self._monitor_only: dict[int, str] = {}
        # Supported clocks do not change while the driver is loaded: read once per GPU.
        self._supported_sm: dict[int, frozenset[int]] = {}
        self._supported_memory: dict[int, frozenset[int]] = {}
        self.leases = LeaseTable()
        # Instances whose lock the fast loop holds at the boost ceiling now, and the
        # boost time and count since the last window.
        self._boosted: dict[str, float] = {}  # instance -> monotonic time it was boosted
        self._boosted_s: dict[str, float] = {}
        self._boosts: dict[str, int] = {}

    # ---- controllability -------------------------------------------------------------
    def start(self) -> dict[int, str]:
        """Reset every managed GPU (no lock found at start is ours) and learn which are
        monitor-only; that reset is the permission probe. Returns the monitor-only ones."""
        with self._mutex:
            for instance in self._instance_gpus:
                self._release(instance)
            for index in self._gpus:
                reason = monitor_only_reason(self._backend, index)
                self._reset_memory(index)
                if reason:
                    self.mark_monitor_only(index, reason)
            log.info("reset clocks of all managed GPUs: agent start")
            return self.monitor_only()

    def monitor_only(self) -> dict[int, str]:
        """GPU index -> why the agent does not lock its clocks (absent: controllable)."""
        with self._mutex:
            return dict(self._monitor_only)

    def mark_monitor_only(self, index: int, reason: str) -> bool:
        """Stop controlling a GPU. Returns False if it was already monitor-only for this
        reason, so the caller (and the log) hear of each change once."""
        with self._mutex:
            if self._monitor_only.get(index) == reason:
                return False
            self._monitor_only[index] = reason
            log.warning("GPU %d is monitor-only from now on: %s", index, reason)
            for instance, gpus in self._instance_gpus.items():
                if index in gpus and self._release(instance) is not None:
                    # Best effort: the group must not keep a lock no lease covers.
                    for error in self._reset(gpus):
                        log.debug(
                            "reset of %s after GPU %d left control: %s", instance, index, error
                        )
            return True

    # ---- commands ---------------------------------------------------------------------
    def reset_all(self, reason: str) -> None:
        """Give every managed GPU back to its governor (shutdown, a failed safety loop).

        The last line of defence, so one GPU's failure, of whatever kind, must not
        keep the others locked."""
        with self._mutex:
            for instance in self._instance_gpus:
                self._release(instance)
            for index in self._gpus:
                try:
                    errors = self._reset((index,))
                except Exception as err:
                    errors = [f"gpu {index}: {type(err).__name__}: {err}"]
                for error in errors:
                    log.error("cannot reset (%s): %s", reason, error)
            log.info("reset clocks of all managed GPUs: %s", reason)

    def set_clocks(self, cmd: pb.SetClocks) -> pb.CommandAck:
        with self._mutex:
            gpus = self._instance_gpus.get(cmd.instance)
            if gpus is None:
                return self._fail(cmd, f"unknown instance {cmd.instance!r}")
            blocked = [
                f"GPU {i} is monitor-only: {self._monitor_only[i]}"
                for i in gpus
                if i in self._monitor_only
            ]
            if blocked:
                # Expected while the server catches up with a ControlStatus: no log line
                # per command (it was logged once when the GPU left control).
                return self._fail(cmd, "; ".join(blocked), quiet=True)
            try:
                self._check(cmd, gpus)
            except _Refused as err:
                return self._fail(cmd, str(err))
            return self._apply(cmd, gpus)

    def reset_clocks(self, cmd: pb.ResetClocks) -> pb.CommandAck:
        with self._mutex:
            gpus = self._instance_gpus.get(cmd.instance)
            if gpus is None:
                return self._fail(cmd, f"unknown instance {cmd.instance!r}")
            self._release(cmd.instance)
            errors = self._reset(gpus)
            if errors:
                return self._fail(cmd, "; ".join(errors))
            return self._ack(cmd.command_id, cmd.instance, gpus)

    def expire_leases(self) -> list[Lease]:
        """Reset the GPUs of every lease that ran out; returns those leases."""
        with self._mutex:
            expired = self.leases.expired(self._monotonic())
            for lease in expired:
                self._end_boost(lease.instance)
                log.warning(
                    "lease of %s at %d MHz expired unrenewed: resetting GPUs %s to default",
                    lease.instance,
                    lease.max_mhz,
                    list(lease.gpu_indices),
                )
                for error in self._reset(lease.gpu_indices):
                    log.error("cannot reset after lease expiry: %s", error)
            return expired

    # ---- the fast loop ------------------------------------------------------------------
    def boost(self, instance: str, on: bool) -> bool:
        """Raise the lease's ceiling to its boost (on) or lower it back to the command's
        clock (off). Does nothing without a lease that allows a boost. Returns whether the
        group is boosted afterwards. A GPU refusing resets the whole group, as a refused
        command does."""
        with self._mutex:
            lease = self.leases.get(instance)
            if lease is None or lease.boost_mhz is None:
                self._end_boost(instance)
                return False
            if on == (instance in self._boosted):
                return on
            hi = lease.boost_mhz if on else lease.max_mhz
            for index in lease.gpu_indices:
                try:
                    self._backend.set_locked_sm_clocks_mhz(index, lease.min_mhz, hi)
                except GpuError as err:
                    log.warning("fast loop: GPU %d refused %d MHz: %s", index, hi, err)
                    self._drop_group(instance, lease.gpu_indices, index, reason_for_error(err))
                    return False
            if on:
                self._boosted[instance] = self._monotonic()
                self._boosts[instance] = self._boosts.get(instance, 0) + 1
            else:
                self._end_boost(instance)
            return on

    def boosted(self, instance: str) -> bool:
        with self._mutex:
            return instance in self._boosted

    def take_boost_window(self, instance: str) -> tuple[float, int]:
        """Seconds boosted and boosts since the last call (a boost in progress counts up
        to now and goes on counting from now)."""
        with self._mutex:
            seconds = self._boosted_s.pop(instance, 0.0)
            since = self._boosted.get(instance)
            if since is not None:
                now = self._monotonic()
                seconds += now - since
                self._boosted[instance] = now
            return seconds, self._boosts.pop(instance, 0)

    # ---- internals (callers hold the mutex) -------------------------------------------
    def _release(self, instance: str) -> Lease | None:
        self._end_boost(instance)
        return self.leases.release(instance)

    def _end_boost(self, instance: str) -> None:
        since = self._boosted.pop(instance, None)
        if since is not None:
            elapsed = self._monotonic() - since
            self._boosted_s[instance] = self._boosted_s.get(instance, 0.0) + elapsed

    def _check(self, cmd: pb.SetClocks, gpus: tuple[int, ...]) -> None:
        """Refuse anything outside what this agent and these GPUs accept."""
        lease_s = cmd.lease_s
        if not (math.isfinite(lease_s) and 0 < lease_s <= self._max_lease_s):
            raise _Refused(f"lease_s {lease_s!r} outside (0, {self._max_lease_s:g}] s")
        lo, hi = cmd.min_sm_clock_mhz, cmd.max_sm_clock_mhz
        if lo > hi:
            raise _Refused(f"min SM clock {lo} MHz above max {hi} MHz")
        clocks = [("min", lo), ("max", hi)]
        if cmd.HasField("reflex"):
            boost, hold_s = cmd.reflex.boost_sm_clock_mhz, cmd.reflex.hold_s
            if boost < hi:
                raise _Refused(f"reflex boost {boost} MHz below the max SM clock {hi} MHz")
            if not (math.isfinite(hold_s) and 0 <= hold_s <= MAX_HOLD_S):
                raise _Refused(f"reflex hold_s {hold_s!r} outside [0, {MAX_HOLD_S:g}] s")
            clocks.append(("reflex boost", boost))
        memory = cmd.memory_clock_mhz if cmd.HasField("memory_clock_mhz") else None
        for index in gpus:
            sm, mem = self._supported(index)
            for name, mhz in clocks:
                if mhz not in sm:
                    raise _Refused(f"{name} SM clock {mhz} MHz is not supported by GPU {index}")
            if memory is not None and memory not in mem:
                raise _Refused(f"memory clock {memory} MHz is not supported by GPU {index}")

    def _supported(self, index: int) -> tuple[frozenset[int], frozenset[int]]:
        if index not in self._supported_sm:
            b = self._backend
            try:
                memory = frozenset(b.supported_memory_clocks_mhz(index))
                sm = frozenset(b.supported_sm_clocks_mhz(index, b.default_memory_clock_mhz(index)))
            except GpuError as err:
                raise _Refused(f"supported clocks of GPU {index} unknown: {err}") from err
            self._supported_sm[index], self._supported_memory[index] = sm, memory
        return self._supported_sm[index], self._supported_memory[index]

    def _apply(self, cmd: pb.SetClocks, gpus: tuple[int, ...]) -> pb.CommandAck:
        memory = cmd.memory_clock_mhz if cmd.HasField("memory_clock_mhz") else None
        reflex = cmd.reflex if cmd.HasField("reflex") else None
        # A boost in progress carries over into a command that allows one: prompts still
        # waiting must not drop to the base clock until the fast loop's next reading.
        keep_boost = reflex is not None and cmd.instance in self._boosted
        hi = reflex.boost_sm_clock_mhz if keep_boost and reflex else cmd.max_sm_clock_mhz
        if not keep_boost:
            self._end_boost(cmd.instance)
        for index in gpus:
            try:
                self._backend.set_locked_sm_clocks_mhz(index, cmd.min_sm_clock_mhz, hi)
            except GpuError as err:
                return self._refused_by_gpu(cmd, gpus, index, err, reason_for_error(err))
            if memory is not None:
                try:
                    self._backend.set_locked_memory_clocks_mhz(index, memory, memory)
                except GpuError as err:
                    # A GPU without memory locks can still have its SM clock locked.
                    lost = None if isinstance(err, GpuNotSupportedError) else reason_for_error(err)
                    return self._refused_by_gpu(cmd, gpus, index, err, lost)
        self.leases.grant(
            cmd.instance,
            gpus,
            cmd.min_sm_clock_mhz,
            cmd.max_sm_clock_mhz,
            cmd.lease_s,
            self._monotonic(),
            cmd.command_id,
            boost_mhz=reflex.boost_sm_clock_mhz if reflex is not None else None,
            hold_s=reflex.hold_s if reflex is not None else 0.0,
        )
        return self._ack(cmd.command_id, cmd.instance, gpus)

    def _refused_by_gpu(
        self,
        cmd: pb.SetClocks,
        gpus: tuple[int, ...],
        index: int,
        err: GpuError,
        lost: str | None,
    ) -> pb.CommandAck:
        """A GPU refused: the whole group goes back to default, so no member keeps a lock
        (new or from an earlier lease) that no lease covers. A refusal that will not
        change by retrying (permission, support, a lost GPU) takes the GPU out of control."""
        self._drop_group(cmd.instance, gpus, index, lost)
        what = f"{type(err).__name__}: {err}"
        if lost is None:
            return self._fail(cmd, f"GPU {index}: {what}")
        return self._fail(cmd, f"GPU {index} is monitor-only: {lost} ({what})", quiet=True)

    def _drop_group(
        self, instance: str, gpus: tuple[int, ...], index: int, lost: str | None
    ) -> None:
        """After GPU `index` refused a lock: the group back to default and its lease gone;
        a refusal that retrying will not change (lost) takes the GPU out of control."""
        self._reset(gpus)
        self._release(instance)
        if lost is not None:
            self.mark_monitor_only(index, lost)  # logged there, once

    def _reset(self, gpus: tuple[int, ...]) -> list[str]:
        errors = []
        for index in gpus:
            try:
                self._backend.reset_locked_sm_clocks(index)
            except GpuError as err:
                errors.append(f"gpu {index}: {type(err).__name__}: {err}")
            errors.extend(self._reset_memory(index))
        return errors

    def _reset_memory(self, index: int) -> list[str]:
        try:
            self._backend.reset_locked_memory_clocks(index)
        except GpuNotSupportedError:
            return []  # no memory locks on this GPU (pre-Ampere): nothing of ours to undo
        except GpuError as err:
            return [f"gpu {index} memory: {type(err).__name__}: {err}"]
        return []

    def _ack(self, command_id: str, instance: str, gpus: tuple[int, ...]) -> pb.CommandAck:
        ack = pb.CommandAck(
            command_id=command_id, instance=instance, ok=True, applied_at_s=self._wall()
        )
        for index in gpus:
            applied = pb.AppliedClocks(gpu_index=index)
            try:
                applied.sm_clock_mhz = self._backend.sm_clock_mhz(index)
                lock = self._backend.locked_sm_clocks_mhz(index)
                if lock is not None:
                    applied.locked_min_sm_clock_mhz, applied.locked_max_sm_clock_mhz = lock
            except GpuError as err:
                log.warning("read-back of GPU %d failed: %s", index, err)
            ack.applied.append(applied)
        return ack

    def _fail(
        self, cmd: pb.SetClocks | pb.ResetClocks, error: str, *, quiet: bool = False
    ) -> pb.CommandAck:
        (log.debug if quiet else log.warning)(
            "command %s for %s failed: %s", cmd.command_id, cmd.instance, error
        )
        return pb.CommandAck(
            command_id=cmd.command_id,
            instance=cmd.instance,
            ok=False,
            error=error,
            applied_at_s=self._wall(),
        )

"""Applying clock commands to a serving instance's GPUs, under leases.

A tensor-parallel group moves together: if any GPU refuses the lock, the whole
group is reset to default, so a group never runs at mixed clocks by our hand.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from agft.v1 import agent_pb2 as pb
from node_agent.gpu.base import GpuBackend, GpuError
from node_agent.lease import Lease, LeaseTable

log = logging.getLogger(__name__)


class ClockController:
    def __init__(
        self,
        backend: GpuBackend,
        instance_gpus: Mapping[str, tuple[int, ...]],
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._backend = backend
        self._instance_gpus = dict(instance_gpus)
        self._monotonic = monotonic
        self._wall = wall
        self.leases = LeaseTable()

    def reset_all(self, reason: str) -> None:
        """Give every managed GPU back to its governor (start-up, shutdown)."""
        for instance in self._instance_gpus:
            self.leases.release(instance)
        gpus = tuple(sorted({i for g in self._instance_gpus.values() for i in g}))
        for error in self._reset(gpus):
            log.error("cannot reset (%s): %s", reason, error)
        log.info("reset clocks of all managed GPUs: %s", reason)

    def set_clocks(self, cmd: pb.SetClocks) -> pb.CommandAck:
        gpus = self._instance_gpus.get(cmd.instance)
        if gpus is None:
            return self._fail(cmd.command_id, cmd.instance, f"unknown instance {cmd.instance!r}")
        if cmd.min_sm_clock_mhz > cmd.max_sm_clock_mhz or cmd.lease_s <= 0:
            return self._fail(cmd.command_id, cmd.instance, "invalid clock range or lease")
        memory = cmd.memory_clock_mhz if cmd.HasField("memory_clock_mhz") else None
        try:
            for index in gpus:
                self._backend.set_locked_sm_clocks_mhz(
                    index, cmd.min_sm_clock_mhz, cmd.max_sm_clock_mhz
                )
                if memory is not None:
                    self._backend.set_locked_memory_clocks_mhz(index, memory, memory)
        except GpuError as err:
            # The whole group goes back to default: no member may keep a lock (new or
            # from an earlier lease) that no lease covers any more.
            self._reset(gpus)
            self.leases.release(cmd.instance)
            return self._fail(cmd.command_id, cmd.instance, f"{type(err).__name__}: {err}")
        self.leases.grant(
            cmd.instance,
            gpus,
            cmd.min_sm_clock_mhz,
            cmd.max_sm_clock_mhz,
            cmd.lease_s,
            self._monotonic(),
            cmd.command_id,
        )
        return self._ack(cmd.command_id, cmd.instance, gpus)

    def reset_clocks(self, cmd: pb.ResetClocks) -> pb.CommandAck:
        gpus = self._instance_gpus.get(cmd.instance)
        if gpus is None:
            return self._fail(cmd.command_id, cmd.instance, f"unknown instance {cmd.instance!r}")
        self.leases.release(cmd.instance)
        errors = self._reset(gpus)
        if errors:
            return self._fail(cmd.command_id, cmd.instance, "; ".join(errors))
        return self._ack(cmd.command_id, cmd.instance, gpus)

    def expire_leases(self) -> list[Lease]:
        """Reset the GPUs of every lease that ran out; returns those leases."""
        expired = self.leases.expired(self._monotonic())
        for lease in expired:
            log.warning(
                "lease of %s at %d MHz expired unrenewed: resetting GPUs %s to default",
                lease.instance,
                lease.max_mhz,
                list(lease.gpu_indices),
            )
            self._reset(lease.gpu_indices)
        return expired

    def _reset(self, gpus: tuple[int, ...]) -> list[str]:
        errors = []
        for index in gpus:
            for reset in (
                self._backend.reset_locked_sm_clocks,
                self._backend.reset_locked_memory_clocks,
            ):
                try:
                    reset(index)
                except GpuError as err:
                    errors.append(f"gpu {index}: {type(err).__name__}: {err}")
        return errors

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

    def _fail(self, command_id: str, instance: str, error: str) -> pb.CommandAck:
        log.warning("command %s for %s failed: %s", command_id, instance, error)
        return pb.CommandAck(
            command_id=command_id,
            instance=instance,
            ok=False,
            error=error,
            applied_at_s=self._wall(),
        )

"""Clock leases: a clock we lowered holds only while the server keeps renewing it.

Time is the agent's own monotonic clock from when a command was received, so a
skewed wall clock on either host cannot stretch or cut a lease.

The table is read and written from several threads (commands and expiry run in
asyncio.to_thread workers, the window loop reads it on the event loop), so every
operation holds a lock. A lock here keeps one operation whole; keeping a GPU lock and
its lease in step across NVML calls is ClockController's job.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Lease:
    instance: str
    gpu_indices: tuple[int, ...]
    min_mhz: int
    max_mhz: int
    expires_at: float  # monotonic seconds
    command_id: str = ""
    # The ceiling the fast loop may raise the lock to while prompts wait (None: none).
    boost_mhz: int | None = None
    hold_s: float = 0.0


class LeaseTable:
    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}
        self._lock = threading.Lock()

    def grant(
        self,
        instance: str,
        gpu_indices: tuple[int, ...],
        min_mhz: int,
        max_mhz: int,
        lease_s: float,
        now: float,
        command_id: str = "",
        boost_mhz: int | None = None,
        hold_s: float = 0.0,
    ) -> Lease:
        lease = Lease(
            instance, gpu_indices, min_mhz, max_mhz, now + lease_s, command_id, boost_mhz, hold_s
        )
        with self._lock:
            self._leases[instance] = lease
        return lease

    def release(self, instance: str) -> Lease | None:
        with self._lock:
            return self._leases.pop(instance, None)

    def expired(self, now: float) -> list[Lease]:
        """Leases past expiry, removed from the table (the caller resets their GPUs)."""
        with self._lock:
            gone = [lease for lease in self._leases.values() if lease.expires_at <= now]
            for lease in gone:
                del self._leases[lease.instance]
        return gone

    def next_expiry(self) -> float | None:
        with self._lock:
            return min((lease.expires_at for lease in self._leases.values()), default=None)

    def active(self) -> list[Lease]:
        with self._lock:
            return list(self._leases.values())

    def get(self, instance: str) -> Lease | None:
        with self._lock:
            return self._leases.get(instance)

"""The rows the fleet hands the writer, typed.

What storage takes is defined here, next to the tables, and not by whoever builds a
dict: a misspelt column or a value of the wrong kind is a type error where the row is
made, not a batch the database refuses later. `values()` gives the column mapping the
writer's Core statements (and its spill file) use; each is written out by hand, since
`dataclasses.asdict` deep-copies and runs for every row of a fleet's every window.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class CommandRow:
    """A command as sent: a lock with its lease, or a reset to default clocks."""

    id: str
    instance_id: int
    kind: Literal["set", "reset"]
    reason: str
    issued_at: datetime
    min_sm_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    memory_clock_mhz: int | None = None
    lease_s: float | None = None
    expires_at: datetime | None = None

    def values(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "instance_id": self.instance_id,
            "kind": self.kind,
            "reason": self.reason,
            "issued_at": self.issued_at,
            "min_sm_clock_mhz": self.min_sm_clock_mhz,
            "max_sm_clock_mhz": self.max_sm_clock_mhz,
            "memory_clock_mhz": self.memory_clock_mhz,
            "lease_s": self.lease_s,
            "expires_at": self.expires_at,
        }


@dataclass(frozen=True, slots=True)
class AppliedClock:
    """What one GPU ran at after a command, as its agent reported it."""

    gpu_index: int
    sm_clock_mhz: int | None
    locked_min_sm_clock_mhz: int | None
    locked_max_sm_clock_mhz: int | None

    def values(self) -> dict[str, Any]:
        return {
            "gpu_index": self.gpu_index,
            "sm_clock_mhz": self.sm_clock_mhz,
            "locked_min_sm_clock_mhz": self.locked_min_sm_clock_mhz,
            "locked_max_sm_clock_mhz": self.locked_max_sm_clock_mhz,
        }


@dataclass(frozen=True, slots=True)
class AckRow:
    """The columns an ack fills on its command's row. `acked_at` is the server's time,
    set when the ack is accepted (`at()`)."""

    id: str  # the command's id
    ack_ok: bool
    ack_error: str | None
    applied: tuple[AppliedClock, ...]
    acked_at: datetime | None = None

    def at(self, acked_at: datetime) -> AckRow:
        return replace(self, acked_at=acked_at)

    def values(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ack_ok": self.ack_ok,
            "ack_error": self.ack_error,
            "applied": [a.values() for a in self.applied],
            "acked_at": self.acked_at,
        }


@dataclass(frozen=True, slots=True)
class RecoveredAck:
    """A command rebuilt from an ack that a replayed window carried, for a replica that
    stopped before writing it: inserted if missing, its ack added if it has none."""

    command: CommandRow
    ack: AckRow

    def values(self) -> dict[str, Any]:
        return self.command.values() | self.ack.values()


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One window's decision, with what was measured in it."""

    instance_id: int
    decided_at: datetime
    window_start: datetime
    window_end: datetime
    policy: str
    slo_policy_id: int | None
    mode: str
    features: dict[str, float | None]  # JSON has no NaN: a feature not finite is None
    clock_in_force_mhz: int | None
    clock_chosen_mhz: int | None
    reason: str
    command_id: str | None
    reward: float | None
    energy_j: float | None
    prompt_tokens: float | None
    generation_tokens: float | None
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    itl_p50_s: float | None
    itl_p90_s: float | None
    default_energy_j: float | None

    def values(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "decided_at": self.decided_at,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "policy": self.policy,
            "slo_policy_id": self.slo_policy_id,
            "mode": self.mode,
            "features": self.features,
            "clock_in_force_mhz": self.clock_in_force_mhz,
            "clock_chosen_mhz": self.clock_chosen_mhz,
            "reason": self.reason,
            "command_id": self.command_id,
            "reward": self.reward,
            "energy_j": self.energy_j,
            "prompt_tokens": self.prompt_tokens,
            "generation_tokens": self.generation_tokens,
            "ttft_p50_s": self.ttft_p50_s,
            "ttft_p90_s": self.ttft_p90_s,
            "itl_p50_s": self.itl_p50_s,
            "itl_p90_s": self.itl_p90_s,
            "default_energy_j": self.default_energy_j,
        }


@dataclass(frozen=True, slots=True)
class PolicyStateRow:
    """A controller's (or the energy estimate's) learning for one instance."""

    instance_id: int
    policy: str
    state: dict[str, Any]
    decisions: int
    updated_at: datetime

    def values(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "policy": self.policy,
            "state": self.state,
            "decisions": self.decisions,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class StoredMark:
    """How far a node's windows are stored: written after them, in their transaction."""

    node_pk: int
    agent_boot_id: int
    windows_stored_seq: int

    def values(self) -> dict[str, Any]:
        return {
            "id": self.node_pk,
            "agent_boot_id": self.agent_boot_id,
            "windows_stored_seq": self.windows_stored_seq,
        }

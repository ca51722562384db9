"""The rows the fleet hands the writer, typed.

What storage takes is defined here, next to the tables, and not by whoever builds a
dict: a misspelt column or a value of the wrong kind is a type error where the row is
made, not a batch the database refuses later. `values()` gives the column mapping the
writer's Core statements (and its spill file) use: a field is its column, read shallowly,
since `dataclasses.asdict` deep-copies and runs for every row of a fleet's every window.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, Literal

_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # per row class, read once


def _columns(row: Any) -> dict[str, Any]:
    """Each field of a row under its own name, values as they are (not copied)."""
    names = _FIELD_NAMES.get(type(row))
    if names is None:
        names = _FIELD_NAMES[type(row)] = tuple(f.name for f in fields(row))
    return {name: getattr(row, name) for name in names}


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
        return _columns(self)


@dataclass(frozen=True, slots=True)
class AppliedClock:
    """What one GPU ran at after a command, as its agent reported it."""

    gpu_index: int
    sm_clock_mhz: int | None
    locked_min_sm_clock_mhz: int | None
    locked_max_sm_clock_mhz: int | None

    def values(self) -> dict[str, Any]:
        return _columns(self)


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
        return _columns(self) | {"applied": [a.values() for a in self.applied]}


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
        return _columns(self)


@dataclass(frozen=True, slots=True)
class PolicyStateRow:
    """A controller's (or the energy estimate's) learning for one instance."""

    instance_id: int
    policy: str
    state: dict[str, Any]
    decisions: int
    updated_at: datetime

    def values(self) -> dict[str, Any]:
        return _columns(self)


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

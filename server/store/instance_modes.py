"""An admin's mode for an instance (auto, observe, pinned, off), changed with an audit entry."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from server.store import audit
from server.store.models import Gpu, Instance


class PinnedClockError(ValueError):
    """A pinned clock the instance's GPUs do not all support."""


@dataclass(frozen=True, slots=True)
class ModeChange:
    mode: str
    pinned_sm_clock_mhz: int | None
    note: str | None


def supported_clocks(db: Session, inst: Instance) -> list[int]:
    """The SM clocks every GPU of the instance supports (a TP group moves together)."""
    lists = db.scalars(
        select(Gpu.supported_sm_clocks_mhz).where(
            Gpu.node_pk == inst.node_pk, Gpu.index.in_(inst.gpu_indices)
        )
    ).all()
    if not lists:
        return []
    common = set(lists[0])
    for clocks in lists[1:]:
        common &= set(clocks)
    return sorted(common)


def _view(inst: Instance) -> dict[str, Any]:
    return {
        "mode": inst.mode,
        "pinned_sm_clock_mhz": inst.pinned_sm_clock_mhz,
        "note": inst.mode_note,
    }


def set_mode(
    factory: sessionmaker[Session], instance_id: int, change: ModeChange, actor: str
) -> bool:
    """Store the change (False: no such instance); PinnedClockError if the clock is not
    one the instance's GPUs support."""
    with factory() as db:
        inst = db.get(Instance, instance_id)
        if inst is None:
            return False
        if change.mode == "pinned":
            supported = supported_clocks(db, inst)
            if change.pinned_sm_clock_mhz not in supported:
                shown = f"{supported[0]}-{supported[-1]} MHz" if supported else "none known"
                raise PinnedClockError(
                    f"{change.pinned_sm_clock_mhz} MHz is not a clock every GPU of this "
                    f"instance supports (supported: {len(supported)} clocks, {shown})"
                )
        before = _view(inst)
        inst.mode = change.mode
        inst.pinned_sm_clock_mhz = change.pinned_sm_clock_mhz
        inst.mode_note = change.note
        inst.mode_changed_at = datetime.now(UTC)
        inst.mode_changed_by = actor[:255]
        audit.record(
            db,
            actor=actor,
            action="instance.mode",
            target=f"instance {instance_id}",
            before=before,
            after=_view(inst),
        )
        db.commit()
        return True


def modes_of(
    factory: sessionmaker[Session], instance_ids: list[int]
) -> dict[int, tuple[str, int | None]]:
    """Each instance's stored mode and pinned clock (for replicas: another may have set it)."""
    if not instance_ids:
        return {}
    with factory() as db:
        rows = db.execute(
            select(Instance.id, Instance.mode, Instance.pinned_sm_clock_mhz).where(
                Instance.id.in_(instance_ids)
            )
        ).all()
    return {r.id: (r.mode, r.pinned_sm_clock_mhz) for r in rows}

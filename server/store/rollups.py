"""Per-minute sums of the decisions, for the energy reports.

The writer adds each batch's decisions to their minutes in the same transaction that
inserts them (`add_to_minutes`), so the sums are never behind the rows and a window sent
again after a crash, which lands in a minute summed long ago, still counts once: the
fleet stores each window once, and its minute grows by it. The sums outlive the
decisions' retention (server/store/retention.py): a report over last year reads minutes,
not windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, func
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from server.store.models import DecisionMinute

_MINUTES = cast(Table, DecisionMinute.__table__)
_SUMS = (
    "windows",
    "windows_measured",
    "windows_estimated",
    "energy_j",
    "covered_energy_j",
    "default_energy_j",
    "modelled_default_j",
)
MINUTE = timedelta(minutes=1)


def minute_of(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def next_minute(t: datetime) -> datetime:
    """The first whole minute at or after t."""
    start = minute_of(t)
    return start if start == t else start + MINUTE


@dataclass(slots=True)
class _Sums:
    windows: int = 0
    windows_measured: int = 0
    windows_estimated: int = 0
    energy_j: float = 0.0
    covered_energy_j: float = 0.0
    default_energy_j: float = 0.0
    modelled_default_j: float = 0.0
    first_window: datetime | None = None
    last_window: datetime | None = None

    def add(self, energy: float | None, default: float | None, end: datetime) -> None:
        # The same counts as server/store/energy.py over raw decisions.
        self.windows += 1
        if energy is not None:
            self.windows_measured += 1
            self.energy_j += energy
            if default is not None:
                self.windows_estimated += 1
                self.covered_energy_j += energy
                self.default_energy_j += default
                if default != energy:
                    self.modelled_default_j += default
        self.first_window = end if self.first_window is None else min(self.first_window, end)
        self.last_window = end if self.last_window is None else max(self.last_window, end)


def minute_rows(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Decision rows (their column mappings) summed per instance and minute."""
    sums: dict[tuple[int, datetime], _Sums] = {}
    for row in decisions:
        end: datetime = row["window_end"]
        key = (int(row["instance_id"]), minute_of(end))
        sums.setdefault(key, _Sums()).add(row["energy_j"], row["default_energy_j"], end)
    return [
        {
            "instance_id": instance_id,
            "minute": minute,
            **{name: getattr(s, name) for name in _SUMS},
            "first_window": s.first_window,
            "last_window": s.last_window,
        }
        for (instance_id, minute), s in sorted(sums.items())
    ]


def add_to_minutes(db: Session, decisions: list[dict[str, Any]]) -> None:
    """Add decision rows to their minutes (one upsert for the batch)."""
    rows = minute_rows(decisions)
    if not rows:
        return
    postgres = db.get_bind().dialect.name == "postgresql"
    stmt = (pg_insert if postgres else sqlite_insert)(_MINUTES)
    excluded = stmt.excluded
    # Two-argument min/max are LEAST/GREATEST on PostgreSQL, scalar min/max on SQLite.
    least, greatest = (func.least, func.greatest) if postgres else (func.min, func.max)
    db.execute(
        stmt.on_conflict_do_update(
            index_elements=["instance_id", "minute"],
            set_={
                **{name: _MINUTES.c[name] + excluded[name] for name in _SUMS},
                "first_window": least(_MINUTES.c.first_window, excluded.first_window),
                "last_window": greatest(_MINUTES.c.last_window, excluded.last_window),
            },
        ),
        rows,
    )

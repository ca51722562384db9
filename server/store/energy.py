"""Energy totals per instance over a time range, summed in the database.

Whole minutes of the range are read from their per-minute sums (server/store/rollups.py),
which outlive the decisions' retention; the part-minutes at either end, from the decisions
themselves (two more queries, over at most two minutes). A range older than the
retention therefore loses only its part-minutes at the ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, func, select
from sqlalchemy.orm import Session

from server.store.models import Decision, DecisionMinute
from server.store.rollups import minute_of, next_minute, window_sums


@dataclass(frozen=True, slots=True)
class InstanceEnergy:
    instance_id: int
    windows: int
    windows_measured: int  # with a measured energy
    windows_estimated: int  # with a default-clock figure (measured or estimated)
    energy_j: float  # over windows_measured
    # Over windows_estimated only: what was used, and what default clocks would have used.
    covered_energy_j: float
    default_energy_j: float
    # The part of default_energy_j that is a model's estimate, not a measurement.
    modelled_default_j: float
    first_window: datetime | None
    last_window: datetime | None

    def plus(self, other: InstanceEnergy) -> InstanceEnergy:
        firsts = [t for t in (self.first_window, other.first_window) if t is not None]
        lasts = [t for t in (self.last_window, other.last_window) if t is not None]
        return InstanceEnergy(
            instance_id=self.instance_id,
            windows=self.windows + other.windows,
            windows_measured=self.windows_measured + other.windows_measured,
            windows_estimated=self.windows_estimated + other.windows_estimated,
            energy_j=self.energy_j + other.energy_j,
            covered_energy_j=self.covered_energy_j + other.covered_energy_j,
            default_energy_j=self.default_energy_j + other.default_energy_j,
            modelled_default_j=self.modelled_default_j + other.modelled_default_j,
            first_window=min(firsts, default=None),
            last_window=max(lasts, default=None),
        )


def energy_by_instance(db: Session, since: datetime, until: datetime) -> list[InstanceEnergy]:
    whole_from, whole_to = next_minute(since), minute_of(until)
    if whole_from >= whole_to:  # no whole minute inside: the decisions alone
        return _merge(_from_decisions(db, since, until))
    parts = [
        *_from_minutes(db, whole_from, whole_to),
        *_from_decisions(db, since, whole_from),
        *_from_decisions(db, whole_to, until),
    ]
    return _merge(parts)


def _merge(parts: Sequence[InstanceEnergy]) -> list[InstanceEnergy]:
    out: dict[int, InstanceEnergy] = {}
    for part in parts:
        known = out.get(part.instance_id)
        out[part.instance_id] = part if known is None else known.plus(part)
    return [out[k] for k in sorted(out)]


def _row(r: Sequence[object]) -> InstanceEnergy:
    def number(v: object) -> float:
        return float(v) if isinstance(v, int | float) else 0.0

    return InstanceEnergy(
        instance_id=int(str(r[0])),
        windows=int(number(r[1])),
        windows_measured=int(number(r[2])),
        windows_estimated=int(number(r[3])),
        energy_j=number(r[4]),
        covered_energy_j=number(r[5]),
        default_energy_j=number(r[6]),
        modelled_default_j=number(r[7]),
        first_window=r[8] if isinstance(r[8], datetime) else None,
        last_window=r[9] if isinstance(r[9], datetime) else None,
    )


def _from_minutes(db: Session, since: datetime, until: datetime) -> list[InstanceEnergy]:
    """Sums of the minutes starting in [since, until) (both whole minutes)."""
    m = DecisionMinute
    rows = db.execute(
        select(
            m.instance_id,
            func.sum(m.windows),
            func.sum(m.windows_measured),
            func.sum(m.windows_estimated),
            func.sum(m.energy_j),
            func.sum(m.covered_energy_j),
            func.sum(m.default_energy_j),
            func.sum(m.modelled_default_j),
            func.min(m.first_window),
            func.max(m.last_window),
        )
        .where(m.minute >= since, m.minute < until)
        .group_by(m.instance_id)
    ).all()
    return [_row(tuple(r)) for r in rows]


def _from_decisions(db: Session, since: datetime, until: datetime) -> list[InstanceEnergy]:
    if since >= until:
        return []
    rows = db.execute(
        select(Decision.instance_id, *window_sums(cast(Table, Decision.__table__)))
        .where(Decision.window_end >= since, Decision.window_end < until)
        .group_by(Decision.instance_id)
    ).all()
    return [_row(tuple(r)) for r in rows]

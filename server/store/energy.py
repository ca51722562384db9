"""Energy totals per instance over a time range, summed in the database (one query)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from server.store.models import Decision


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


def energy_by_instance(db: Session, since: datetime, until: datetime) -> list[InstanceEnergy]:
    estimated = Decision.default_energy_j.is_not(None) & Decision.energy_j.is_not(None)
    modelled = estimated & (Decision.default_energy_j != Decision.energy_j)
    rows = db.execute(
        select(
            Decision.instance_id,
            func.count(),
            func.count(Decision.energy_j),
            func.sum(case((estimated, 1), else_=0)),
            func.coalesce(func.sum(Decision.energy_j), 0.0),
            func.coalesce(func.sum(case((estimated, Decision.energy_j), else_=0.0)), 0.0),
            func.coalesce(func.sum(case((estimated, Decision.default_energy_j), else_=0.0)), 0.0),
            func.coalesce(func.sum(case((modelled, Decision.default_energy_j), else_=0.0)), 0.0),
            func.min(Decision.window_end),
            func.max(Decision.window_end),
        )
        .where(Decision.window_end >= since, Decision.window_end < until)
        .group_by(Decision.instance_id)
        .order_by(Decision.instance_id)
    ).all()
    return [
        InstanceEnergy(
            instance_id=r[0],
            windows=int(r[1]),
            windows_measured=int(r[2]),
            windows_estimated=int(r[3] or 0),
            energy_j=float(r[4]),
            covered_energy_j=float(r[5]),
            default_energy_j=float(r[6]),
            modelled_default_j=float(r[7]),
            first_window=r[8],
            last_window=r[9],
        )
        for r in rows
    ]

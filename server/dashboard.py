"""What the dashboard shows, assembled from the live fleet and the database (sync: run it
in a thread). Plain dicts for the templates; no HTML here."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from server.api.schemas import NodeOut
from server.api.views import instance_out, spec_in_force
from server.energy.report import J_PER_KWH
from server.fleet.service import FleetService
from server.store import queries
from server.store.energy import InstanceEnergy, energy_by_instance


@dataclass(frozen=True, slots=True)
class Saving:
    saved_kwh: float
    used_kwh: float
    saved_pct: float | None


def _saving(items: list[InstanceEnergy]) -> Saving:
    covered = sum(i.covered_energy_j for i in items)
    default = sum(i.default_energy_j for i in items)
    used = sum(i.energy_j for i in items)
    reference = default + (used - covered)
    saved = default - covered
    return Saving(
        saved / J_PER_KWH, used / J_PER_KWH, 100 * saved / reference if reference else None
    )


def _slo_status(ratio: float | None, percentile: float) -> str:
    if ratio is None:
        return "unknown"
    return "met" if ratio >= percentile / 100.0 else "missed"


def fleet_view(
    factory: sessionmaker[Session], fleet: FleetService, price_per_kwh: float
) -> dict[str, Any]:
    now = datetime.now(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = day.replace(day=1)
    with factory() as db:
        rows = queries.instances(db)
        today = energy_by_instance(db, day, now)
        this_month = energy_by_instance(db, month, now)
        nodes = [NodeOut.model_validate(n).model_dump() for n in queries.nodes_with_gpus(db)]
    by_instance_today = {i.instance_id: _saving([i]) for i in today}
    instances = []
    power = 0.0
    counts = [0.0, 0, 0.0, 0]
    for row in rows:
        view = instance_out(row, fleet).model_dump()
        totals = fleet.totals.get(row["id"])
        spec = spec_in_force(row, fleet)
        ttft = tpot = None
        if view["live"] is not None:
            if view["live"]["power_w"] is not None:
                power += view["live"]["power_w"]
            if totals is not None:
                own = totals.attainment_counts()
                for k, v in enumerate(own):
                    counts[k] += v
                ttft = own[0] / own[1] if own[1] else None
                tpot = own[2] / own[3] if own[3] else None
        statuses = {
            _slo_status(ttft, spec.targets.percentile),
            _slo_status(tpot, spec.targets.percentile),
        }
        view["slo_status"] = (
            "missed" if "missed" in statuses else "unknown" if "unknown" in statuses else "met"
        )
        view["attainment_ttft"] = ttft
        view["attainment_tpot"] = tpot
        view["slo"] = spec
        view["saving_today"] = by_instance_today.get(row["id"])
        instances.append(view)
    day_saving, month_saving = _saving(today), _saving(this_month)
    return {
        "now": now,
        "nodes": nodes,
        "agents_connected": len(fleet.sessions),
        "instances": instances,
        "live_instances": len(fleet.live),
        "power_w": power,
        "today": day_saving,
        "month": month_saving,
        "money_today": day_saving.saved_kwh * price_per_kwh,
        "money_month": month_saving.saved_kwh * price_per_kwh,
        "attainment_ttft": counts[0] / counts[1] if counts[1] else None,
        "attainment_tpot": counts[2] / counts[3] if counts[3] else None,
    }

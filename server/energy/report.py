"""Energy reports: used and saved against default clocks, per instance, pool and fleet.

The saving is an estimate (server/energy/estimator.py); each row says how much of it
rests on the model, and how wide its band is from the model's own measured error.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from server.energy.estimator import ErrorStats
from server.store.energy import InstanceEnergy

J_PER_KWH = 3.6e6
METHOD = (
    "Energy used is the GPUs' own energy counters (NVML), summed per window. Energy at "
    "default clocks is measured in windows that ran at default clocks and estimated in the "
    "others, from each instance's model of power at default clocks against the tokens it "
    "served, fitted on calibration windows (two in every 60 held at default clocks) and on "
    "windows of the observe and off modes. "
    "The band is the modelled part times the model's measured out-of-sample error on those "
    "windows (|mean| + 2 standard errors). Measured against the true default-clock runs of "
    "the same traffic in `agft bench` (docs/ENERGY.md). Windows with no estimate (unknown "
    "telemetry, a model not yet calibrated) count at their own energy: no saving is claimed "
    "for them."
)


@dataclass(frozen=True, slots=True)
class Prices:
    price_per_kwh: float
    currency: str
    co2_g_per_kwh: float


@dataclass(slots=True)
class EnergyRow:
    group: str
    instances: int = 0
    windows: int = 0
    windows_estimated: int = 0
    energy_j: float = 0.0
    covered_energy_j: float = 0.0
    default_energy_j: float = 0.0
    modelled_default_j: float = 0.0
    band_j: float = 0.0  # half-width of the saving's band
    unbanded_instances: int = 0  # whose model has too few tests for a band

    def add(self, item: InstanceEnergy, errors: ErrorStats | None) -> None:
        self.instances += 1
        self.windows += item.windows
        self.windows_estimated += item.windows_estimated
        self.energy_j += item.energy_j
        self.covered_energy_j += item.covered_energy_j
        self.default_energy_j += item.default_energy_j
        self.modelled_default_j += item.modelled_default_j
        band = errors.band if errors is not None else None
        if band is None:
            if item.modelled_default_j > 0:
                self.unbanded_instances += 1
        else:
            self.band_j += band * item.modelled_default_j

    @property
    def saved_j(self) -> float:
        return self.default_energy_j - self.covered_energy_j

    @property
    def saved_pct(self) -> float | None:
        # Against everything default clocks would have used, unestimated windows included.
        reference = self.default_energy_j + (self.energy_j - self.covered_energy_j)
        return 100.0 * self.saved_j / reference if reference > 0 else None

    def as_dict(self, prices: Prices) -> dict[str, object]:
        saved_kwh = self.saved_j / J_PER_KWH
        used_kwh = self.energy_j / J_PER_KWH
        reference = self.default_energy_j + (self.energy_j - self.covered_energy_j)
        band_pct = 100.0 * self.band_j / reference if reference > 0 else None
        return {
            "group": self.group,
            "instances": self.instances,
            "windows": self.windows,
            "windows_estimated": self.windows_estimated,
            "energy_j": self.energy_j,
            "energy_kwh": used_kwh,
            "default_energy_j": reference,
            "saved_j": self.saved_j,
            "saved_kwh": saved_kwh,
            "saved_pct": self.saved_pct,
            "saved_band_j": self.band_j if not self.unbanded_instances else None,
            "saved_band_pct": band_pct if not self.unbanded_instances else None,
            "modelled_share_pct": 100.0 * self.modelled_default_j / reference
            if reference > 0
            else None,
            "cost": used_kwh * prices.price_per_kwh,
            "cost_saved": saved_kwh * prices.price_per_kwh,
            "co2_kg": used_kwh * prices.co2_g_per_kwh / 1000.0,
            "co2_saved_kg": saved_kwh * prices.co2_g_per_kwh / 1000.0,
        }


def group_key(group_by: str, label: str, instance: Mapping[str, object]) -> str:
    if group_by == "fleet":
        return "fleet"
    if group_by == "pool":
        labels = instance.get("labels") or {}
        value = labels.get(label) if isinstance(labels, dict) else None
        return f"{label}={value}" if value else f"{label} unset"
    return f"{instance.get('node_id')}/{instance.get('name')} (instance {instance.get('id')})"


def build(
    totals: Sequence[InstanceEnergy],
    instances: Mapping[int, Mapping[str, object]],
    errors: Mapping[int, ErrorStats],
    *,
    group_by: str,
    label: str,
) -> tuple[list[EnergyRow], EnergyRow]:
    groups: dict[str, EnergyRow] = {}
    fleet = EnergyRow("fleet")
    for item in totals:
        info = instances.get(item.instance_id, {"id": item.instance_id})
        key = group_key(group_by, label, info)
        row = groups.setdefault(key, EnergyRow(key))
        row.add(item, errors.get(item.instance_id))
        fleet.add(item, errors.get(item.instance_id))
    return [groups[k] for k in sorted(groups)], fleet


CSV_COLUMNS = (
    "group",
    "instances",
    "windows",
    "windows_estimated",
    "energy_kwh",
    "default_energy_j",
    "saved_kwh",
    "saved_pct",
    "saved_band_pct",
    "modelled_share_pct",
    "cost",
    "cost_saved",
    "co2_kg",
    "co2_saved_kg",
)


def to_csv(
    rows: Sequence[dict[str, object]], since: datetime, until: datetime, prices: Prices
) -> str:
    out = io.StringIO()
    out.write(f"# AGFT energy report {since.isoformat()} to {until.isoformat()}\n")
    out.write(
        f"# price {prices.price_per_kwh} {prices.currency}/kWh; grid {prices.co2_g_per_kwh} "
        "g CO2/kWh\n"
    )
    out.write(f"# {METHOD}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in CSV_COLUMNS])
    return out.getvalue()


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else ""
    return str(value)

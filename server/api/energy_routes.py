"""GET /api/v1/energy: energy used and saved against default clocks, as JSON or CSV."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from pydantic import AwareDatetime, BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from server.api.auth import require_viewer
from server.energy import report
from server.energy.estimator import ESTIMATOR_STATE, DefaultEnergyEstimator, ErrorStats
from server.fleet.service import FleetService
from server.store import queries
from server.store.energy import InstanceEnergy, energy_by_instance
from server.store.policy_states import load_policy_states

router = APIRouter(
    prefix="/api/v1",
    tags=["energy"],
    dependencies=[Depends(require_viewer)],
    responses={401: {"description": "no or unknown token"}},
)

LabelName = Annotated[str, Query(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]


class EnergyRowOut(BaseModel):
    group: str
    instances: int
    windows: int
    windows_estimated: int = Field(description="windows with a default-clock figure")
    energy_j: float
    energy_kwh: float
    default_energy_j: float = Field(description="what default clocks would have used")
    saved_j: float
    saved_kwh: float
    saved_pct: float | None
    saved_band_j: float | None = Field(description="± on saved_j; null: model not yet tested")
    saved_band_pct: float | None
    modelled_share_pct: float | None = Field(
        description="share of default_energy_j that is estimated rather than measured"
    )
    cost: float
    cost_saved: float
    co2_kg: float
    co2_saved_kg: float


class EnergyReport(BaseModel):
    since: datetime
    until: datetime
    group_by: str
    price_per_kwh: float
    currency: str
    co2_g_per_kwh: float
    method: str
    rows: list[EnergyRowOut]
    total: EnergyRowOut


def _read(
    factory: sessionmaker[Session], since: datetime, until: datetime
) -> tuple[list[InstanceEnergy], dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    with factory() as db:
        totals = energy_by_instance(db, since, until)
        instances = {i["id"]: i for i in queries.instances(db)}
    states = load_policy_states(factory, [t.instance_id for t in totals], ESTIMATOR_STATE)
    return totals, instances, states


def _errors(fleet: FleetService, states: dict[int, dict[str, Any]]) -> dict[int, ErrorStats]:
    errors: dict[int, ErrorStats] = {}
    for instance_id, state in states.items():
        model = DefaultEnergyEstimator()
        try:
            model.load_state(state)
        except ValueError:
            continue  # no band for it: the report says so rather than guess
        errors[instance_id] = model.errors
    for instance_id, (_session, runtime) in fleet.live.items():
        errors[instance_id] = runtime.estimator.errors  # newer than the saved state
    return errors


@router.get(
    "/energy",
    response_model=EnergyReport,
    responses={200: {"content": {"text/csv": {}}, "description": "the report (JSON or CSV)"}},
)
async def energy_report(
    request: Request,
    since: Annotated[
        AwareDatetime | None, Query(description="windows ending at or after; default: 24 h ago")
    ] = None,
    until: Annotated[AwareDatetime | None, Query(description="before; default: now")] = None,
    group_by: Literal["instance", "pool", "fleet"] = "instance",
    pool_label: LabelName = "pool",
    format: Literal["json", "csv"] = "json",
    price_per_kwh: Annotated[float | None, Query(ge=0, le=100)] = None,
    co2_g_per_kwh: Annotated[float | None, Query(ge=0, le=2000)] = None,
) -> Any:
    settings = request.app.state.settings
    until = until or datetime.now(UTC)
    since = since or until - timedelta(hours=24)
    if until <= since:
        raise HTTPException(status_code=422, detail="until must be after since")
    prices = report.Prices(
        price_per_kwh if price_per_kwh is not None else settings.energy_price_per_kwh,
        settings.energy_currency,
        co2_g_per_kwh if co2_g_per_kwh is not None else settings.grid_co2_g_per_kwh,
    )
    totals, instances, states = await asyncio.to_thread(
        _read, request.app.state.session_factory, since, until
    )
    rows, fleet = report.build(
        totals,
        instances,
        _errors(request.app.state.fleet, states),
        group_by=group_by,
        label=pool_label,
    )
    row_dicts = [r.as_dict(prices) for r in rows]
    if format == "csv":
        body = report.to_csv([*row_dicts, fleet.as_dict(prices)], since, until, prices)
        name = f"agft-energy-{since:%Y%m%dT%H%M}-{until:%Y%m%dT%H%M}.csv"
        return Response(
            body,
            media_type="text/csv",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )
    return EnergyReport(
        since=since,
        until=until,
        group_by=group_by,
        price_per_kwh=prices.price_per_kwh,
        currency=prices.currency,
        co2_g_per_kwh=prices.co2_g_per_kwh,
        method=report.METHOD,
        rows=[EnergyRowOut.model_validate(r) for r in row_dicts],
        total=EnergyRowOut.model_validate(fleet.as_dict(prices)),
    )

"""The admin's API: SLO policies (CRUD), the policy in force per instance, instance modes.

Every change is stored with its audit entry in one transaction, then applied to the
live controllers before the response returns, so the next window is decided under it.
A refused request (422, 404, 409, 401, 403) changes nothing.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from server.api.auth import Admin, require_viewer
from server.api.control_schemas import (
    ModeIn,
    SloInForce,
    SloPolicyIn,
    SloPolicyOut,
    SloPolicyPatch,
)
from server.api.deps import DbSession
from server.api.schemas import InstanceOut
from server.api.views import instance_out
from server.auth.sessions import Principal
from server.fleet.service import FleetService
from server.slo.controllers import ControllerError, controller_factory
from server.store import queries, slo_policies
from server.store.instance_modes import ModeChange, PinnedClockError, set_mode

router = APIRouter(
    prefix="/api/v1",
    tags=["control"],
    dependencies=[Depends(require_viewer)],
    responses={
        401: {"description": "no or unknown token"},
        403: {"description": "a viewer token, or a session without its CSRF token"},
        404: {"description": "not found"},
    },
)

PolicyId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="SLO policy id")]
InstanceId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="instance id")]


def actor(principal: Principal) -> str:
    return f"token {principal.token_id} ({principal.name}, {principal.via})"


def _fleet(request: Request) -> FleetService:
    fleet: FleetService = request.app.state.fleet
    return fleet


def _check_controller(body: SloPolicyIn) -> None:
    try:
        controller_factory(slo_policies.spec_of(body.model_dump()))
    except ControllerError as err:
        raise _unprocessable(("body", "controller_tunables"), str(err)) from None


def _unprocessable(loc: tuple[str, ...], message: str) -> HTTPException:
    # The same shape as FastAPI's own validation errors, so a client parses one format.
    return HTTPException(
        422,
        detail=[{"loc": list(loc), "msg": message, "type": "value_error"}],
    )


async def _store(request: Request, call: Any, *args: Any) -> Any:
    try:
        result = await asyncio.to_thread(call, request.app.state.session_factory, *args)
    except slo_policies.PolicyConflictError as err:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from None
    except slo_policies.PolicyTargetError as err:
        raise _unprocessable(("body", "instance_id"), str(err)) from None
    fleet = _fleet(request)
    await fleet.steering.reload()
    await fleet.apply_control()
    return result


@router.get("/slo-policies", response_model=list[SloPolicyOut])
def list_policies(db: DbSession) -> list[SloPolicyOut]:
    return [
        SloPolicyOut.model_validate(slo_policies.as_dict(r)) for r in slo_policies.all_policies(db)
    ]


@router.post(
    "/slo-policies",
    response_model=SloPolicyOut,
    status_code=status.HTTP_201_CREATED,
    responses={409: {"description": "a policy with this name or scope exists"}},
)
async def create_policy(body: SloPolicyIn, request: Request, principal: Admin) -> SloPolicyOut:
    _check_controller(body)
    row = await _store(request, slo_policies.create, body.model_dump(), actor(principal))
    return SloPolicyOut.model_validate(row)


@router.get("/slo-policies/{policy_id}", response_model=SloPolicyOut)
def get_policy(policy_id: PolicyId, db: DbSession) -> SloPolicyOut:
    row = slo_policies.get(db, policy_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"SLO policy {policy_id} not found")
    return SloPolicyOut.model_validate(slo_policies.as_dict(row))


async def _replace(
    policy_id: int, body: SloPolicyIn, request: Request, principal: Principal
) -> SloPolicyOut:
    _check_controller(body)
    row = await _store(request, slo_policies.update, policy_id, body.model_dump(), actor(principal))
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"SLO policy {policy_id} not found")
    return SloPolicyOut.model_validate(row)


@router.put(
    "/slo-policies/{policy_id}",
    response_model=SloPolicyOut,
    responses={409: {"description": "another policy has this name or scope"}},
)
async def replace_policy(
    policy_id: PolicyId, body: SloPolicyIn, request: Request, principal: Admin
) -> SloPolicyOut:
    return await _replace(policy_id, body, request, principal)


@router.patch(
    "/slo-policies/{policy_id}",
    response_model=SloPolicyOut,
    responses={409: {"description": "another policy has this name or scope"}},
)
async def patch_policy(
    policy_id: PolicyId, body: SloPolicyPatch, request: Request, principal: Admin
) -> SloPolicyOut:
    def current(factory: Any) -> dict[str, Any] | None:
        with factory() as db:
            row = slo_policies.get(db, policy_id)
            return slo_policies.as_dict(row) if row is not None else None

    existing = await asyncio.to_thread(current, request.app.state.session_factory)
    if existing is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"SLO policy {policy_id} not found")
    merged = {k: existing[k] for k in slo_policies.FIELDS}
    merged.update(body.model_dump(exclude_unset=True))
    try:
        whole = SloPolicyIn.model_validate(merged)
    except ValueError as err:
        raise _unprocessable(("body",), str(err)) from None
    return await _replace(policy_id, whole, request, principal)


@router.delete("/slo-policies/{policy_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_policy(policy_id: PolicyId, request: Request, principal: Admin) -> Response:
    deleted = await _store(request, slo_policies.delete, policy_id, actor(principal))
    if not deleted:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"SLO policy {policy_id} not found")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/instances/{instance_id}/slo", response_model=SloInForce)
def slo_in_force(instance_id: InstanceId, request: Request, db: DbSession) -> SloInForce:
    found = queries.instance(db, instance_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"instance {instance_id} not found")
    labels = found["labels"] or {}
    steering = _fleet(request).steering
    resolution = steering.resolve(instance_id, labels)
    spec = steering.spec_for(instance_id, labels)
    policy = slo_policies.get(db, spec.id) if spec.id is not None else None
    return SloInForce(
        instance_id=instance_id,
        matched_scope=spec.describe_scope(),
        policy=SloPolicyOut.model_validate(slo_policies.as_dict(policy)) if policy else None,
        ttft_s=spec.targets.ttft_s,
        tpot_s=spec.targets.tpot_s,
        percentile=spec.targets.percentile,
        max_p90_slowdown=spec.max_p90_slowdown,
        max_attainment_loss_points=spec.max_attainment_loss_points,
        controller=spec.controller,
        shadowed_policy_ids=[s.id for s in resolution.shadowed if s.id is not None],
        labels=labels,
    )


@router.put(
    "/instances/{instance_id}/mode",
    response_model=InstanceOut,
    responses={422: {"description": "a bad mode, or a clock the GPUs do not support"}},
)
async def put_mode(
    instance_id: InstanceId, body: ModeIn, request: Request, principal: Admin
) -> InstanceOut:
    change = ModeChange(body.mode, body.pinned_sm_clock_mhz, body.note or None)
    factory = request.app.state.session_factory
    try:
        found = await asyncio.to_thread(set_mode, factory, instance_id, change, actor(principal))
    except PinnedClockError as err:
        raise _unprocessable(("body", "pinned_sm_clock_mhz"), str(err)) from None
    if not found:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"instance {instance_id} not found")
    fleet = _fleet(request)
    fleet.set_mode(instance_id, change.mode, change.pinned_sm_clock_mhz)

    def read(f: Any) -> dict[str, Any] | None:
        with f() as db:
            return queries.instance(db, instance_id)

    row = await asyncio.to_thread(read, factory)
    if row is None:  # deleted in between
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"instance {instance_id} not found")
    return instance_out(row, fleet)


class ClockBelief(BaseModel):
    clock_mhz: int
    power_w: float = Field(description="predicted mean power at this clock for the last load")
    itl_upper_s: float = Field(description="upper bound of the predicted mean token gap")
    ttft_upper_s: float = Field(description="upper bound of the predicted TTFT percentile")
    allowed: bool
    why_not: str


class ControllerView(BaseModel):
    """What the controller of a live instance believes now (agft; others keep no model)."""

    instance_id: int
    live: bool = Field(description="false while the instance's agent is not connected")
    controller: str | None
    beliefs: dict[str, Any] | None = Field(
        description="budgets (seconds) and per-clock predictions; null: no model to show"
    )
    clocks: list[ClockBelief]


@router.get("/instances/{instance_id}/controller", response_model=ControllerView)
def controller_view(instance_id: InstanceId, request: Request, db: DbSession) -> ControllerView:
    if queries.instance(db, instance_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"instance {instance_id} not found")
    live = _fleet(request).live.get(instance_id)
    if live is None:
        return ControllerView(
            instance_id=instance_id, live=False, controller=None, beliefs=None, clocks=[]
        )
    runtime = live[1]
    beliefs = runtime.policy.beliefs(runtime.arms)
    clocks = [ClockBelief.model_validate(c) for c in (beliefs or {}).pop("clocks", [])]
    return ControllerView(
        instance_id=instance_id,
        live=True,
        controller=runtime.policy.name,
        beliefs=beliefs,
        clocks=clocks,
    )

"""Read-only REST API: nodes, instances, decisions, health."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi import Path as PathParam
from sqlalchemy import text

from server.api.auth import require_viewer
from server.api.deps import DbSession
from server.api.schemas import DecisionOut, DecisionPage, Health, InstanceOut, NodeOut
from server.store import queries

# Closed by default: every route here needs at least a viewer (bearer token or login).
router = APIRouter(
    prefix="/api/v1",
    tags=["fleet"],
    dependencies=[Depends(require_viewer)],
    responses={401: {"description": "no or unknown token"}, 404: {"description": "not found"}},
)
health_router = APIRouter(tags=["health"])


@router.get("/nodes", response_model=list[NodeOut])
def list_nodes(db: DbSession) -> list[NodeOut]:
    return [NodeOut.model_validate(n) for n in queries.nodes_with_gpus(db)]


@router.get("/instances", response_model=list[InstanceOut])
def list_instances(db: DbSession) -> list[InstanceOut]:
    return [InstanceOut.model_validate(i) for i in queries.instances(db)]


# Ids are 32-bit in the instances table: a larger one is a clear 422, never a 500.
InstanceId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="instance id")]


@router.get("/instances/{instance_id}", response_model=InstanceOut)
def get_instance(instance_id: InstanceId, db: DbSession) -> InstanceOut:
    found = queries.instance(db, instance_id)
    if found is None:
        raise HTTPException(status_code=404, detail=f"instance {instance_id} not found")
    return InstanceOut.model_validate(found)


@router.get("/instances/{instance_id}/decisions", response_model=DecisionPage)
def list_decisions(
    instance_id: InstanceId,
    db: DbSession,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[
        int | None,
        Query(ge=1, le=2**63 - 1, description="id cursor from the previous page"),
    ] = None,
) -> DecisionPage:
    if queries.instance(db, instance_id) is None:
        raise HTTPException(status_code=404, detail=f"instance {instance_id} not found")
    rows = queries.decisions_page(db, instance_id, limit, before_id)
    items = [DecisionOut.model_validate(r) for r in rows]
    next_id = items[-1].id if len(items) == limit else None
    return DecisionPage(items=items, next_before_id=next_id)


@health_router.get("/healthz", response_model=Health)
def healthz(request: Request, db: DbSession) -> Health:
    try:
        db.execute(text("SELECT 1"))
        database = "ok"
    except Exception as err:  # report, don't crash, so probes see what is wrong
        database = f"error: {type(err).__name__}"
    fleet = request.app.state.fleet
    writer = request.app.state.writer.status()
    status = "ok" if database == "ok" and writer.ok else "degraded"
    health = Health(
        status=status,
        database=database,
        writer=writer.detail,
        rows_queued=writer.queued,
        rows_set_aside=writer.rows_set_aside,
        agents_connected=len(fleet.sessions),
    )
    if status != "ok":
        # A probe must see a stuck writer: persistence is the product's memory.
        raise HTTPException(status_code=503, detail=health.model_dump())
    return health

"""Read-only REST API: nodes, instances, decisions, health."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import AwareDatetime, TypeAdapter
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from server.api.auth import require_viewer
from server.api.deps import DbSession
from server.api.schemas import DecisionOut, DecisionPage, Health, InstanceOut, NodeOut
from server.api.views import instance_out
from server.fleet.service import FleetService
from server.store import queries

T = TypeVar("T")

# Closed by default: every route here needs at least a viewer (bearer token or login).
router = APIRouter(
    prefix="/api/v1",
    tags=["fleet"],
    dependencies=[Depends(require_viewer)],
    responses={
        401: {"description": "no or unknown token"},
        403: {"description": "the token's role may not do this"},
        404: {"description": "not found"},
    },
)
health_router = APIRouter(tags=["health"])


@router.get("/nodes", response_model=list[NodeOut])
def list_nodes(db: DbSession) -> list[NodeOut]:
    return [NodeOut.model_validate(n) for n in queries.nodes_with_gpus(db)]


_INSTANCE_LIST = TypeAdapter(list[InstanceOut])


def _instance_list_json(factory: sessionmaker[Session], fleet: FleetService) -> bytes:
    rows = _in_session(factory, queries.instances)
    return _INSTANCE_LIST.dump_json([instance_out(r, fleet) for r in rows])


@router.get("/instances", response_model=list[InstanceOut])
async def list_instances(request: Request) -> Response:
    # Built and serialised off the event loop: at thousands of instances this is tens of
    # milliseconds of Python that would otherwise hold up every agent's decisions.
    body = await asyncio.to_thread(
        _instance_list_json, request.app.state.session_factory, request.app.state.fleet
    )
    return Response(content=body, media_type="application/json")


# Ids are 32-bit in the instances table: a larger one is a clear 422, never a 500.
InstanceId = Annotated[int, PathParam(ge=1, le=2**31 - 1, description="instance id")]


@router.get("/instances/{instance_id}", response_model=InstanceOut)
async def get_instance(instance_id: InstanceId, request: Request) -> InstanceOut:
    factory = request.app.state.session_factory
    found = await asyncio.to_thread(_in_session, factory, queries.instance, instance_id)
    if found is None:
        raise HTTPException(status_code=404, detail=f"instance {instance_id} not found")
    return instance_out(found, request.app.state.fleet)


def _in_session(factory: sessionmaker[Session], query: Callable[..., T], *args: Any) -> T:
    with factory() as db:
        return query(db, *args)


@router.get("/instances/{instance_id}/decisions", response_model=DecisionPage)
def list_decisions(
    instance_id: InstanceId,
    db: DbSession,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[
        int | None,
        Query(ge=1, le=2**63 - 1, description="id cursor from the previous page"),
    ] = None,
    since: Annotated[
        AwareDatetime | None, Query(description="windows ending at or after (ISO 8601, zone)")
    ] = None,
    until: Annotated[
        AwareDatetime | None, Query(description="windows ending before (ISO 8601, zone)")
    ] = None,
) -> DecisionPage:
    if queries.instance(db, instance_id) is None:
        raise HTTPException(status_code=404, detail=f"instance {instance_id} not found")
    if since is not None and until is not None and until <= since:
        raise HTTPException(status_code=422, detail="until must be after since")
    rows = queries.decisions_page(db, instance_id, limit, before_id, since, until)
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

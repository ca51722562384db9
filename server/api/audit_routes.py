"""The audit log over the API: who changed what, when, from what to what."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import AwareDatetime

from server.api.auth import require_viewer
from server.api.control_schemas import AuditOut, AuditPage
from server.api.deps import DbSession
from server.store import audit

router = APIRouter(
    prefix="/api/v1",
    tags=["audit"],
    dependencies=[Depends(require_viewer)],
    responses={401: {"description": "no or unknown token"}},
)


@router.get("/audit", response_model=AuditPage)
def audit_log(
    db: DbSession,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="id cursor from the previous page")
    ] = None,
    since: Annotated[AwareDatetime | None, Query(description="at or after (ISO 8601)")] = None,
    until: Annotated[AwareDatetime | None, Query(description="before (ISO 8601)")] = None,
    target: Annotated[
        str | None, Query(max_length=255, description='e.g. "slo_policy 3", "instance 7"')
    ] = None,
) -> AuditPage:
    if since is not None and until is not None and until <= since:
        raise HTTPException(status_code=422, detail="until must be after since")
    rows = audit.entries(
        db, limit=limit, before_id=before_id, since=since, until=until, target=target
    )
    items = [AuditOut.model_validate(r) for r in rows]
    return AuditPage(items=items, next_before_id=items[-1].id if len(items) == limit else None)

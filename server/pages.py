"""The dashboard's pages and live fragments (Jinja2 + htmx), behind the login.

Pages read what the REST API reads; every change a page offers goes through the REST API
(web/static/agft.js sends it with the session's CSRF token), so the API's validation and
audit log cover the dashboard too.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session, sessionmaker

from server.api import control_routes, energy_routes
from server.api.auth import PageViewer
from server.api.views import instance_out
from server.auth.sessions import Principal
from server.dashboard import fleet_view
from server.fleet.service import FleetService
from server.slo.controllers import CONTROLLERS
from server.store import audit, queries, slo_policies
from server.store.instance_modes import supported_clocks
from server.store.models import Instance

InstanceId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]
PERIODS = {"24h": timedelta(hours=24), "7d": timedelta(days=7), "30d": timedelta(days=30)}


def page_router(templates: Jinja2Templates) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    def render(
        request: Request, name: str, principal: Principal, status: int = 200, **context: Any
    ) -> HTMLResponse:
        return templates.TemplateResponse(
            request, name, {"principal": principal, **context}, status_code=status
        )

    def factory(request: Request) -> sessionmaker[Session]:
        made: sessionmaker[Session] = request.app.state.session_factory
        return made

    def fleet(request: Request) -> FleetService:
        live: FleetService = request.app.state.fleet
        return live

    async def fleet_context(request: Request) -> dict[str, Any]:
        settings = request.app.state.settings
        view = await asyncio.to_thread(
            fleet_view, factory(request), fleet(request), settings.energy_price_per_kwh
        )
        return {"view": view, "currency": settings.energy_currency}

    @router.get("/", response_class=HTMLResponse)
    async def fleet_page(request: Request, principal: PageViewer) -> HTMLResponse:
        context = await fleet_context(request)
        return render(request, "fleet.html", principal, active="fleet", **context)

    @router.get("/fragments/fleet", response_class=HTMLResponse)
    async def fleet_fragment(request: Request, principal: PageViewer) -> HTMLResponse:
        return render(request, "_fleet_live.html", principal, **await fleet_context(request))

    def not_found(request: Request, principal: Principal, message: str) -> HTMLResponse:
        return render(request, "not_found.html", principal, status=404, message=message)

    @router.get("/instances/{instance_id}", response_class=HTMLResponse)
    async def instance_page(
        instance_id: InstanceId, request: Request, principal: PageViewer
    ) -> HTMLResponse:
        def read(db: Session) -> dict[str, Any] | None:
            row = queries.instance(db, instance_id)
            if row is None:
                return None
            inst = db.get(Instance, instance_id)
            return {
                "row": row,
                "clocks": supported_clocks(db, inst) if inst else [],
                "default_mhz": queries.instance_default_clock_mhz(db, instance_id),
                "decisions": list(queries.decisions_page(db, instance_id, 30, None)),
                "slo": control_routes.slo_in_force(instance_id, request, db),
            }

        found = await asyncio.to_thread(_with_db, factory(request), read)
        if found is None:
            return not_found(
                request,
                principal,
                f"There is no instance {instance_id}. It may have been "
                "removed, or the link is wrong; the fleet page lists every instance.",
            )
        return render(
            request,
            "instance.html",
            principal,
            active="fleet",
            instance=instance_out(found["row"], fleet(request)),
            clocks=found["clocks"],
            default_mhz=found["default_mhz"],
            decisions=found["decisions"],
            slo=found["slo"],
        )

    @router.get("/fragments/instances/{instance_id}/decisions", response_class=HTMLResponse)
    async def decisions_fragment(
        instance_id: InstanceId, request: Request, principal: PageViewer
    ) -> HTMLResponse:
        decisions = await asyncio.to_thread(
            _with_db,
            factory(request),
            lambda db: list(queries.decisions_page(db, instance_id, 30, None)),
        )
        return render(request, "_decisions.html", principal, decisions=decisions)

    @router.get("/fragments/instances/{instance_id}/beliefs", response_class=HTMLResponse)
    async def beliefs_fragment(
        instance_id: InstanceId, request: Request, principal: PageViewer
    ) -> HTMLResponse:
        def read(db: Session) -> Any:
            if queries.instance(db, instance_id) is None:
                return None
            return control_routes.controller_view(instance_id, request, db)

        view = await asyncio.to_thread(_with_db, factory(request), read)
        if view is None:
            return not_found(request, principal, f"There is no instance {instance_id}.")
        return render(request, "_beliefs.html", principal, view=view)

    @router.get("/slo", response_class=HTMLResponse)
    async def slo_page(request: Request, principal: PageViewer) -> HTMLResponse:
        def read(db: Session) -> tuple[list[Any], list[dict[str, Any]]]:
            return slo_policies.all_policies(db), queries.instances(db)

        rows, instances = await asyncio.to_thread(_with_db, factory(request), read)
        steering = fleet(request).steering
        # Which policy governs each instance, once for all of them.
        governing = Counter(steering.spec_for(i["id"], i["labels"] or {}).id for i in instances)
        policies = [
            {
                **slo_policies.as_dict(row),
                "scope_text": slo_policies.as_spec(row).describe_scope(),
                "governs": governing[row.id],
            }
            for row in rows
        ]
        return render(
            request,
            "slo.html",
            principal,
            active="slo",
            policies=policies,
            controllers=CONTROLLERS,
            default=steering.default,
        )

    @router.get("/energy", response_class=HTMLResponse)
    async def energy_page(
        request: Request,
        principal: PageViewer,
        period: str = "24h",
        group_by: str = "instance",
    ) -> HTMLResponse:
        now = datetime.now(UTC)
        day = now.replace(hour=0, minute=0, second=0, microsecond=0)
        starts = {"today": day, "month": day.replace(day=1)}
        if period not in PERIODS and period not in starts:
            period = "24h"
        if group_by not in ("instance", "pool", "fleet"):
            group_by = "instance"
        since = starts[period] if period in starts else now - PERIODS[period]
        report = await energy_routes.energy_report(
            request,
            since=since,
            until=now,
            group_by=group_by,  # type: ignore[arg-type]
        )
        rows = [
            {"group": r.group, "energy_kwh": r.energy_kwh, "saved_kwh": r.saved_kwh}
            for r in report.rows
        ]
        csv_url = (
            f"/api/v1/energy?format=csv&group_by={group_by}"
            f"&since={since.isoformat().replace('+', '%2B')}"
            f"&until={now.isoformat().replace('+', '%2B')}"
        )
        return render(
            request,
            "energy.html",
            principal,
            active="energy",
            report=report,
            period=period,
            rows_json=json.dumps(rows),
            csv_url=csv_url,
        )

    @router.get("/audit", response_class=HTMLResponse)
    async def audit_page(
        request: Request,
        principal: PageViewer,
        before_id: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    ) -> HTMLResponse:
        limit = 100
        rows = await asyncio.to_thread(
            _with_db,
            factory(request),
            lambda db: list(audit.entries(db, limit=limit, before_id=before_id)),
        )
        entries = [
            {
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                **_changes(e.before, e.after),
            }
            for e in rows
        ]
        next_id = rows[-1].id if len(rows) == limit else None
        return render(
            request,
            "audit.html",
            principal,
            active="audit",
            entries=entries,
            next_before_id=next_id,
        )

    return router


def _with_db(factory: sessionmaker[Session], read: Any) -> Any:
    with factory() as db:
        return read(db)


def _changes(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, str]:
    """What an entry changed, readably: only the fields that differ on an update."""
    if before is not None and after is not None:
        keys = [k for k in after if before.get(k) != after.get(k)]
        before = {k: before.get(k) for k in keys}
        after = {k: after.get(k) for k in keys}
    return {
        "before_text": json.dumps(before, sort_keys=True) if before is not None else "(none)",
        "after_text": json.dumps(after, sort_keys=True) if after is not None else "(none)",
    }

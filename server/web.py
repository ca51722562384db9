"""Server-rendered admin pages (Jinja2), reading the same queries as the REST API."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from server.api.deps import DbSession
from server.store import queries
from server.store.models import Decision

WEB_DIR = Path(__file__).resolve().parents[1] / "web"


def web_router(app: FastAPI) -> APIRouter:
    templates = Jinja2Templates(directory=WEB_DIR / "templates")
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    router = APIRouter(include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    def fleet_page(request: Request, db: DbSession) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            "fleet.html",
            {"nodes": queries.nodes_with_gpus(db), "instances": queries.instances(db)},
        )

    @router.get("/instances/{instance_id}", response_class=HTMLResponse)
    def instance_page(instance_id: int, request: Request, db: DbSession) -> HTMLResponse:
        instance = queries.instance(db, instance_id)
        if instance is None:
            raise HTTPException(status_code=404, detail=f"instance {instance_id} not found")
        decisions = list(queries.decisions_page(db, instance_id, 120, None))
        chart = clock_chart(decisions, queries.instance_default_clock_mhz(db, instance_id))
        return templates.TemplateResponse(
            request,
            "instance.html",
            {"instance": instance, "decisions": decisions, "chart": chart},
        )

    return router


def clock_chart(
    decisions: Sequence[Decision], default_mhz: int | None, width: int = 900, height: int = 160
) -> dict[str, Any] | None:
    """SVG polylines (oldest left) of the clock in force and the window power."""
    rows = list(reversed(decisions))
    if len(rows) < 2 or default_mhz is None:
        return None
    clocks = [r.clock_in_force_mhz or default_mhz for r in rows]
    powers = [
        (r.energy_j / max((r.window_end - r.window_start).total_seconds(), 1e-6))
        if r.energy_j is not None
        else None
        for r in rows
    ]
    top_power = max((p for p in powers if p is not None), default=1.0) or 1.0
    step = width / (len(rows) - 1)

    def y(value: float, top: float) -> float:
        return round(height - 4 - (height - 8) * value / top, 1)

    clock_points = " ".join(f"{i * step:.1f},{y(c, default_mhz)}" for i, c in enumerate(clocks))
    power_points = " ".join(
        f"{i * step:.1f},{y(p, top_power)}" for i, p in enumerate(powers) if p is not None
    )
    return {
        "width": width,
        "height": height,
        "clock_points": clock_points,
        "power_points": power_points,
        "default_mhz": default_mhz,
        "min_clock_mhz": min(clocks),
        "top_power_w": round(top_power),
    }

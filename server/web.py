"""Server-rendered admin pages (Jinja2), reading the same queries as the REST API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from server.api.deps import DbSession
from server.store import queries

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
        return templates.TemplateResponse(
            request, "instance.html", {"instance": instance, "decisions": decisions}
        )

    return router

"""Server-rendered admin pages (Jinja2), reading the same queries as the REST API."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Form, HTTPException, Request, Response
from fastapi import Path as PathParam
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from server.api.auth import LoginRequired, PageViewer
from server.api.deps import DbSession
from server.auth.sessions import COOKIE, LIFETIME, end_session, start_session
from server.auth.store import AuthError, verify
from server.store import queries
from server.store.models import Decision

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
LOGIN_CSRF_COOKIE = "agft_login_csrf"
SWAGGER_UI = "5.35.0"  # web/static/vendor/README.md


def web_router(app: FastAPI) -> APIRouter:
    templates = Jinja2Templates(directory=WEB_DIR / "templates")
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    router = APIRouter(include_in_schema=False)

    @app.exception_handler(LoginRequired)
    async def to_login(request: Request, _: LoginRequired) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)

    @router.get("/login", response_class=HTMLResponse)
    def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return _login_form(request, _safe_next(next), None)

    def _login_form(request: Request, next_url: str, error: str | None) -> HTMLResponse:
        login_csrf = secrets.token_urlsafe(24)
        response = templates.TemplateResponse(
            request,
            "login.html",
            {"next": next_url, "error": error, "login_csrf": login_csrf, "principal": None},
            status_code=401 if error else 200,
        )
        # Double-submit: a login form posted from another site lacks this cookie's value.
        response.set_cookie(
            LOGIN_CSRF_COOKIE, login_csrf, httponly=True, samesite="strict", max_age=600
        )
        return response

    @router.post("/login")
    async def login(
        request: Request,
        token: Annotated[str, Form(max_length=512)] = "",
        login_csrf: Annotated[str, Form(max_length=128)] = "",
        next: Annotated[str, Form(max_length=2048)] = "/",
    ) -> Response:
        next_url = _safe_next(next)
        expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not expected or not secrets.compare_digest(expected, login_csrf):
            return _login_form(request, next_url, "The form expired; please try again.")
        factory = request.app.state.session_factory
        try:
            info = await asyncio.to_thread(verify, factory, token, "api")
        except AuthError as err:
            return _login_form(request, next_url, f"Not logged in: {err}.")
        secret, _ = await asyncio.to_thread(start_session, factory, info.token_id)
        response = RedirectResponse(next_url, status_code=303)
        response.set_cookie(
            COOKIE,
            secret,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=int(LIFETIME.total_seconds()),
        )
        response.delete_cookie(LOGIN_CSRF_COOKIE)
        return response

    @router.post("/logout")
    async def logout(request: Request, principal: PageViewer) -> RedirectResponse:
        factory = request.app.state.session_factory
        await asyncio.to_thread(end_session, factory, request.cookies.get(COOKIE))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @router.get("/docs", response_class=HTMLResponse)
    def docs(_: PageViewer) -> HTMLResponse:
        # Served from the package (web/static/vendor): an air-gapped fleet has no CDN.
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="AGFT API",
            swagger_js_url=f"/static/vendor/swagger-ui-bundle-{SWAGGER_UI}.js",
            swagger_css_url=f"/static/vendor/swagger-ui-{SWAGGER_UI}.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    @router.get("/openapi.json")
    def openapi(_: PageViewer) -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/", response_class=HTMLResponse)
    def fleet_page(request: Request, db: DbSession, principal: PageViewer) -> HTMLResponse:
        return templates.TemplateResponse(
            request,
            "fleet.html",
            {
                "nodes": queries.nodes_with_gpus(db),
                "instances": queries.instances(db),
                "principal": principal,
            },
        )

    @router.get("/instances/{instance_id}", response_class=HTMLResponse)
    def instance_page(
        instance_id: Annotated[int, PathParam(ge=1, le=2**31 - 1)],
        request: Request,
        db: DbSession,
        principal: PageViewer,
    ) -> HTMLResponse:
        instance = queries.instance(db, instance_id)
        if instance is None:
            raise HTTPException(status_code=404, detail=f"instance {instance_id} not found")
        decisions = list(queries.decisions_page(db, instance_id, 120, None))
        chart = clock_chart(decisions, queries.instance_default_clock_mhz(db, instance_id))
        return templates.TemplateResponse(
            request,
            "instance.html",
            {"instance": instance, "decisions": decisions, "chart": chart, "principal": principal},
        )

    return router


def _safe_next(target: str) -> str:
    """Only paths on this server: a login must never bounce the browser elsewhere."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


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

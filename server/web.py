"""Server-rendered admin pages (Jinja2), reading the same queries as the REST API."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Form, Request, Response
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from server.api.auth import LoginRequired, PageViewer
from server.auth.sessions import COOKIE, LIFETIME, end_session, start_session
from server.auth.store import AuthError, verify
from server.pages import page_router

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
LOGIN_CSRF_COOKIE = "agft_login_csrf"
SWAGGER_UI = "5.35.0"  # web/static/vendor/README.md


def web_router(app: FastAPI) -> APIRouter:
    templates = Jinja2Templates(directory=WEB_DIR / "templates")
    templates.env.filters["energy"] = format_energy
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

    router.include_router(page_router(templates))

    return router


def _safe_next(target: str) -> str:
    """Only paths on this server: a login must never bounce the browser elsewhere."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def format_energy(kwh: float | None) -> str:
    """kWh in the unit a person reads best: Wh under 1 kWh, MWh from 1,000 kWh."""
    if kwh is None:
        return "unknown"
    if abs(kwh) < 1:
        return f"{kwh * 1000:.1f} Wh"
    if abs(kwh) < 1000:
        return f"{kwh:.2f} kWh"
    return f"{kwh / 1000:.2f} MWh"

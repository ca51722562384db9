"""Who may call what: bearer API tokens or a dashboard session; viewers read, admins change.

Every route but /healthz depends on one of these. Unsafe methods from a session (a
browser) must carry the session's CSRF token; bearer calls need none.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from server.auth.sessions import COOKIE, Principal, csrf_ok, session_principal
from server.auth.store import AuthError, verify
from server.auth.tokens import bearer

CSRF_HEADER = "x-csrf-token"


class LoginRequired(Exception):
    """A page (not the API) was asked for without a login: send the browser to /login."""


async def _principal(request: Request) -> Principal | None:
    factory = request.app.state.session_factory
    token = bearer(request.headers.items())
    if token is not None:
        try:
            info = await asyncio.to_thread(verify, factory, token, "api")
        except AuthError as err:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail=str(err),
                headers={"WWW-Authenticate": "Bearer"},
            ) from None
        return Principal(info.token_id, info.role or "viewer", info.name, "bearer")
    return await asyncio.to_thread(session_principal, factory, request.cookies.get(COOKIE))


async def _csrf_checked(request: Request, principal: Principal) -> Principal:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return principal
    presented = request.headers.get(CSRF_HEADER)
    if presented is None and request.headers.get("content-type", "").startswith(
        "application/x-www-form-urlencoded"
    ):
        presented = str((await request.form()).get("csrf_token") or "") or None
    if not csrf_ok(principal, presented):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="missing or wrong CSRF token")
    return principal


async def require_viewer(request: Request) -> Principal:
    principal = await _principal(request)
    if principal is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="authentication required: Authorization: Bearer agft_api_... "
            "(`agft token create --role viewer`) or a dashboard login",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return await _csrf_checked(request, principal)


async def require_admin(request: Request) -> Principal:
    principal = await require_viewer(request)
    if not principal.is_admin:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="this needs an admin token")
    return principal


async def page_viewer(request: Request) -> Principal:
    """Like require_viewer, for HTML pages: no login means a redirect, not JSON."""
    principal = await _principal(request)
    if principal is None:
        raise LoginRequired()
    return await _csrf_checked(request, principal)


Viewer = Annotated[Principal, Depends(require_viewer)]
Admin = Annotated[Principal, Depends(require_admin)]
PageViewer = Annotated[Principal, Depends(page_viewer)]

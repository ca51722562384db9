"""Every REST route but /healthz needs a token or a login; viewers read, admins change.

Dashboard logins are HttpOnly session cookies; what changes state from a browser
carries the session's CSRF token; a login never redirects off this server.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from server.auth.store import revoke
from server.auth.tokens import parse
from tests.helpers.running import running_server

API_ROUTES = ["/api/v1/nodes", "/api/v1/instances", "/api/v1/instances/1"]


async def test_no_route_but_healthz_answers_without_a_token(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as srv, httpx.AsyncClient(base_url=srv.http_url) as anon:
        assert (await anon.get("/healthz")).status_code == 200
        for route in API_ROUTES:
            refused = await anon.get(route)
            assert refused.status_code == 401, route
            assert "agft token create" in refused.json()["detail"]
            assert refused.headers["www-authenticate"] == "Bearer"
        for route in ("/", "/instances/1", "/docs", "/openapi.json"):
            page = await anon.get(route)
            assert page.status_code == 303 and page.headers["location"].startswith("/login")
        bad = await anon.get("/api/v1/nodes", headers={"Authorization": "Bearer agft_api_x_y"})
        assert bad.status_code == 401 and "malformed token id" in bad.json()["detail"]


async def test_viewer_and_admin_tokens_read_and_revoked_ones_do_not(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as srv:
        for role in ("viewer", "admin"):
            async with srv.client(role) as client:
                for route in API_ROUTES[:2]:
                    assert (await client.get(route)).status_code == 200
                assert (await client.get("/api/v1/instances/1")).status_code == 404
                spec = await client.get("/openapi.json")
                assert spec.status_code == 200 and "/api/v1/instances" in spec.json()["paths"]
        token = srv.api_token("viewer")
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=srv.http_url, headers=headers) as client:
            assert (await client.get("/api/v1/nodes")).status_code == 200
            revoke(srv.app.state.session_factory, parse(token).token_id, kind="api")
            refused = await client.get("/api/v1/nodes")
            assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
        # A node token is not an API token.
        node = {"Authorization": f"Bearer {srv.node_token('n1')}"}
        async with httpx.AsyncClient(base_url=srv.http_url, headers=node) as client:
            refused = await client.get("/api/v1/nodes")
            assert refused.status_code == 401 and "node token cannot be used" in refused.text


async def _login(client: httpx.AsyncClient, token: str, next_url: str = "/") -> httpx.Response:
    form = await client.get("/login", params={"next": next_url})
    match = re.search(r'name="login_csrf" value="([^"]+)"', form.text)
    assert match is not None
    return await client.post(
        "/login", data={"token": token, "login_csrf": match.group(1), "next": next_url}
    )


async def test_a_login_is_a_session_cookie_with_csrf_on_changes(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as srv, httpx.AsyncClient(base_url=srv.http_url) as web:
        token = srv.api_token("admin")
        done = await _login(web, token, "/instances/7")
        assert done.status_code == 303 and done.headers["location"] == "/instances/7"
        cookie = done.headers["set-cookie"]
        assert "agft_session=" in cookie and "HttpOnly" in cookie
        assert "samesite=strict" in cookie.lower()
        assert token not in cookie
        fleet = await web.get("/")
        assert fleet.status_code == 200 and "Log out" in fleet.text
        assert (await web.get("/api/v1/instances")).status_code == 200  # the API too

        # A form posted without the session's CSRF token is refused and changes nothing.
        refused = await web.post("/logout", data={"csrf_token": "forged"})
        assert refused.status_code == 403
        assert (await web.get("/")).status_code == 200
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', fleet.text)
        assert csrf is not None
        out = await web.post("/logout", data={"csrf_token": csrf.group(1)})
        assert out.status_code == 303
        assert (await web.get("/")).status_code == 303


async def test_a_login_needs_its_form_and_a_valid_token(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as srv, httpx.AsyncClient(base_url=srv.http_url) as web:
        token = srv.api_token("viewer")
        # Posted from elsewhere (no login cookie): refused.
        forged = await web.post("/login", data={"token": token, "login_csrf": "x", "next": "/"})
        assert forged.status_code == 401 and "expired" in forged.text
        wrong = await _login(web, token[:-3] + "zzz")
        assert wrong.status_code == 401 and "unknown API token" in wrong.text
        # Never redirected off this server.
        for target in ("//evil.example/", "https://evil.example/", "/\\evil"):
            web.cookies.clear()
            done = await _login(web, token, target)
            assert done.status_code == 303 and done.headers["location"] == "/", target


async def test_revoking_the_token_ends_its_logins(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as srv, httpx.AsyncClient(base_url=srv.http_url) as web:
        token = srv.api_token("viewer")
        await _login(web, token)
        assert (await web.get("/")).status_code == 200
        revoke(srv.app.state.session_factory, parse(token).token_id, kind="api")
        assert (await web.get("/")).status_code == 303


@pytest.mark.parametrize("role", ["viewer", "admin"])
def test_token_cli_creates_lists_and_revokes(
    tmp_path: Path, role: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from agft_cli.main import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert main(["token", "--database-url", url, "create", "--role", role, "--name", "ops"]) == 0
    plaintext = capsys.readouterr().out.splitlines()[0]
    presented = parse(plaintext)
    assert presented.kind == "api"
    assert main(["token", "--database-url", url, "list"]) == 0
    listing = capsys.readouterr().out
    assert role in listing and "ops" in listing and presented.secret not in listing
    assert main(["token", "--database-url", url, "revoke", presented.token_id]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["token", "--database-url", url, "revoke", presented.token_id]) == 1


async def test_ids_past_the_columns_range_are_422_not_500(database_url: str) -> None:
    async with running_server(database_url) as srv, srv.client("viewer") as client:
        for path in (
            "/api/v1/instances/9223372036854775808",
            "/api/v1/instances/3000000000",
            "/api/v1/instances/3000000000/decisions",
            "/api/v1/instances/1/decisions?before_id=9223372036854775808",
            "/api/v1/instances/0",
        ):
            answer = await client.get(path)
            assert answer.status_code == 422, (path, answer.status_code)
        assert (await client.get("/api/v1/instances/2147483647")).status_code == 404

"""/docs works on an air-gapped machine: every script and style comes from this server,
and the spec says how to authenticate and which errors each route answers."""

from __future__ import annotations

import re

from tests.helpers.running import running_server


async def test_docs_load_nothing_from_elsewhere(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as srv, srv.client("viewer") as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        html = page.text
        assert not re.search(r"(src|href)=['\"]?(https?:)?//", html), html
        assets = re.findall(r"['\"](/static/[^'\"]+)['\"]", html)
        assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
        for asset in assets:
            answer = await client.get(asset)
            assert answer.status_code == 200 and answer.content, asset
        spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            if path == "/healthz":
                assert "security" not in operation
                continue
            assert operation["security"] == [{"bearer": []}], (path, method)
            assert "401" in codes, (path, method)
            if "{" in path:
                assert "404" in codes and "422" in codes, (path, method)

"""A real server (uvicorn HTTP + grpc.aio) on loopback ports chosen by the OS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from server.app import create_app
from server.auth.store import create_api_token, create_node_token
from server.settings import Settings


@dataclass
class RunningServer:
    app: FastAPI
    http_url: str
    grpc_address: str
    settings: Settings

    def api_token(self, role: str = "admin") -> str:
        """A fresh API token, as `agft token create --role ROLE` would print it."""
        _, plaintext = create_api_token(self.app.state.session_factory, role, f"test {role}")
        return plaintext

    def client(self, role: str = "admin") -> httpx.AsyncClient:
        """An HTTP client of the REST API, authenticated with a fresh token of this role."""
        return httpx.AsyncClient(
            base_url=self.http_url, headers={"Authorization": f"Bearer {self.api_token(role)}"}
        )

    async def decisions(self, instance_name: str = "vllm-0") -> list[dict[str, Any]]:
        """The newest page of an instance's decisions, read through the REST API."""
        async with self.client() as client:
            instances = (await client.get("/api/v1/instances")).json()
            inst = next(i for i in instances if i["name"] == instance_name)
            page = (await client.get(f"/api/v1/instances/{inst['id']}/decisions")).json()
            return page["items"]  # type: ignore[no-any-return]

    async def wait_for_decisions(
        self, count: int, instance_name: str = "vllm-0"
    ) -> list[dict[str, Any]]:
        """Poll until at least count decisions are stored (the writer batches them)."""
        items: list[dict[str, Any]] = []
        for _ in range(100):
            items = await self.decisions(instance_name)
            if len(items) >= count:
                return items
            await asyncio.sleep(0.05)
        raise AssertionError(f"expected {count} decisions, have {len(items)}")

    def node_token(self, node_id: str) -> str:
        """A fresh node token, as `agft node-token create NODE_ID` would print it."""
        _, plaintext = create_node_token(self.app.state.session_factory, node_id)
        return plaintext


@asynccontextmanager
async def running_server(
    database_url: str, grpc_port: int = 0, **overrides: Any
) -> AsyncIterator[RunningServer]:
    # Loop tests want a predictable policy; learner tests ask for theirs by name.
    overrides.setdefault("policy", "static")
    # Test windows carry made-up times near 1970: a retention pass would delete them.
    overrides.setdefault("decision_retention_days", 0)
    settings = Settings(
        database_url=database_url,
        http_host="127.0.0.1",
        http_port=0,
        grpc_host="127.0.0.1",
        grpc_port=grpc_port,
        **overrides,
    )
    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(
            app, f"http://127.0.0.1:{port}", f"127.0.0.1:{app.state.grpc_port}", settings
        )
    finally:
        server.should_exit = True
        await task

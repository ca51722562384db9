"""Liveness: REST /healthz and the standard gRPC health-checking service."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.running import running_server


async def test_rest_and_grpc_health(sqlite_url: str) -> None:
    async with running_server(sqlite_url) as srv:
        async with srv.client() as client:
            body = (await client.get("/healthz")).json()
            assert body == {
                "status": "ok",
                "database": "ok",
                "writer": "ok",
                "rows_queued": 0,
                "rows_set_aside": 0,
                "agents_connected": 0,
            }
            assert (await client.get("/docs")).status_code == 200
            assert (await client.get("/api/v1/instances/999/decisions")).status_code == 404
            assert (await client.get("/api/v1/instances/1/decisions?limit=0")).status_code == 422
        async with grpc.aio.insecure_channel(srv.grpc_address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "agft.v1.AgentLink"):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

"""create_app(settings): FastAPI and the grpc.aio server in one process and one event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import grpc
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server.api.audit_routes import router as audit_router
from server.api.control_routes import router as control_router
from server.api.energy_routes import router as energy_router
from server.api.metrics_route import registry_for
from server.api.metrics_route import router as metrics_router
from server.api.routes import health_router, router
from server.control.policy import SloTargets
from server.fleet.service import FleetService
from server.grpc.servicer import SERVICE, AgentLinkServicer, add_to_server
from server.settings import Settings
from server.slo.controllers import controller_factory
from server.slo.spec import SERVER_DEFAULT, SloSpec
from server.store.database import make_engine, make_session_factory
from server.store.migrate import upgrade_to_head
from server.store.retention import run_retention
from server.store.writer import BatchWriter
from server.web import web_router

log = logging.getLogger(__name__)


def server_version() -> str:
    try:
        return version("agft")
    except PackageNotFoundError:
        return "0+unknown"


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise RuntimeError(f"cannot read the gRPC {what} {path}: {err.strerror or err}") from None


def bind_grpc(grpc_server: grpc.aio.Server, settings: Settings) -> int:
    """Listen with TLS when a certificate is configured; plaintext otherwise (loopback)."""
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    cert, key = settings.grpc_tls_cert_file, settings.grpc_tls_key_file
    if bool(cert) != bool(key):
        raise RuntimeError("AGFT_GRPC_TLS_CERT_FILE and AGFT_GRPC_TLS_KEY_FILE go together")
    if cert and key:
        client_ca = settings.grpc_tls_client_ca_file
        credentials = grpc.ssl_server_credentials(
            [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
            root_certificates=_read(client_ca, "client CA") if client_ca else None,
            require_client_auth=bool(client_ca),
        )
        return _bound(lambda: grpc_server.add_secure_port(address, credentials), address)
    if settings.grpc_host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "gRPC on %s without TLS: node tokens cross the network in clear; set "
            "AGFT_GRPC_TLS_CERT_FILE and AGFT_GRPC_TLS_KEY_FILE",
            address,
        )
    return _bound(lambda: grpc_server.add_insecure_port(address), address)


def _bound(bind: Callable[[], int], address: str) -> int:
    try:
        return int(bind())
    except RuntimeError:
        raise RuntimeError(
            f"cannot listen for agents on {address}: the address is in use (another AGFT "
            "server?) or not available on this host"
        ) from None


def server_default_spec(settings: Settings) -> SloSpec:
    """The policy of every instance no SLO policy covers: the server's settings."""
    static = settings.policy == "static" and settings.static_clock_mhz is not None
    return SloSpec(
        id=None,
        name="server default",
        scope=SERVER_DEFAULT,
        targets=SloTargets(settings.slo_ttft_s, settings.slo_tpot_s, settings.slo_percentile),
        max_p90_slowdown=settings.slo_max_p90_slowdown,
        max_attainment_loss_points=settings.slo_max_attainment_loss_points,
        controller=settings.policy,
        tunables={"clock_mhz": settings.static_clock_mhz} if static else {},
    )


def openapi_with_bearer(app: FastAPI) -> dict[str, Any]:
    """The spec, saying how to authenticate: a bearer API token on every route but
    /healthz (the routes check it themselves; this tells Swagger UI and clients)."""
    if app.openapi_schema is None:
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        spec.setdefault("components", {})["securitySchemes"] = {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "an API token: `agft token create --role viewer|admin`",
            }
        }
        for path, operations in spec["paths"].items():
            if path != "/healthz":
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
        app.openapi_schema = spec
    return app.openapi_schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    default_spec = server_default_spec(settings)
    controller_factory(default_spec)  # fails fast on an unknown name or tunable

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.migrate_on_start:
            await asyncio.to_thread(upgrade_to_head, settings.database_url)
        engine = make_engine(settings.database_url)
        factory = make_session_factory(engine)
        writer = BatchWriter(
            factory,
            batch_max=settings.persist_batch_max,
            interval_s=settings.persist_interval_s,
            stuck_after_s=settings.persist_stuck_after_s,
            max_queued=settings.persist_max_queued,
            spill_path=Path(settings.persist_spill_path) if settings.persist_spill_path else None,
        )
        writer.start()
        fleet = FleetService(
            factory,
            writer,
            default_spec,
            window_s=settings.window_s,
            lease_s=settings.lease_s,
            server_version=server_version(),
            state_save_interval_s=settings.state_save_interval_s,
            node_lease_s=settings.node_lease_s,
        )
        await fleet.load_control()
        fleet.start()
        # Always running: with nothing to delete (retention 0) the decisions' day
        # partitions still need making ahead.
        retention = asyncio.create_task(
            run_retention(factory, settings.decision_retention_days, settings.retention_interval_s),
            name="agft-retention",
        )
        # No SO_REUSEPORT: a second server on the same port must fail, not split the agents.
        grpc_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        add_to_server(AgentLinkServicer(fleet), grpc_server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
        port = bind_grpc(grpc_server, settings)
        if port == 0:
            raise RuntimeError(f"cannot bind gRPC to {settings.grpc_host}:{settings.grpc_port}")
        # Named once the port is known: a restarted server on the same host and port takes
        # its own nodes back at once instead of waiting their leases out.
        fleet.ownership.replica_id = settings.replica_id or f"{socket.gethostname()}:{port}"
        await grpc_server.start()
        for name in ("", SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        app.state.settings = settings
        app.state.session_factory = factory
        app.state.fleet = fleet
        app.state.writer = writer
        app.state.metrics = registry_for(fleet, writer)
        app.state.grpc_port = port
        log.info("gRPC listening on %s:%d", settings.grpc_host, port)
        try:
            yield
        finally:
            await health_servicer.enter_graceful_shutdown()
            for session in list(fleet.sessions.values()):
                session.close()
            await grpc_server.stop(grace=1.0)
            retention.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await retention
            await fleet.stop()
            await writer.stop(timeout_s=settings.persist_shutdown_s)
            engine.dispose()

    app = FastAPI(
        title="AGFT",
        version=server_version(),
        description="GPU clock control plane for LLM serving fleets",
        lifespan=lifespan,
        # Served by server/web.py behind a login: closed by default, the docs too.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.openapi = lambda: openapi_with_bearer(app)  # type: ignore[method-assign]
    app.include_router(router)
    app.include_router(control_router)
    app.include_router(audit_router)
    app.include_router(metrics_router)
    app.include_router(energy_router)
    app.include_router(health_router)
    app.include_router(web_router(app))
    return app

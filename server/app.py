"""create_app(settings): FastAPI and the grpc.aio server in one process and one event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import grpc
from fastapi import FastAPI
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server.api.routes import health_router, router
from server.control.policy import SloTargets
from server.control.registry import policy_factory
from server.fleet.service import FleetService
from server.grpc.servicer import SERVICE, AgentLinkServicer, add_to_server
from server.settings import Settings
from server.store.database import make_engine, make_session_factory
from server.store.migrate import upgrade_to_head
from server.store.writer import BatchWriter
from server.web import web_router

log = logging.getLogger(__name__)


def server_version() -> str:
    try:
        return version("agft")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    make_policy = policy_factory(  # fails fast on an unknown name
        settings.policy,
        slo=SloTargets(settings.slo_ttft_s, settings.slo_tpot_s, settings.slo_percentile),
        static_clock_mhz=settings.static_clock_mhz,
    )

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
            spill_path=Path(settings.persist_spill_path) if settings.persist_spill_path else None,
        )
        writer.start()
        fleet = FleetService(
            factory,
            writer,
            make_policy,
            window_s=settings.window_s,
            lease_s=settings.lease_s,
            server_version=server_version(),
            state_save_interval_s=settings.state_save_interval_s,
        )
        fleet.start()
        grpc_server = grpc.aio.server()
        add_to_server(AgentLinkServicer(fleet), grpc_server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
        port = grpc_server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
        if port == 0:
            raise RuntimeError(f"cannot bind gRPC to {settings.grpc_host}:{settings.grpc_port}")
        await grpc_server.start()
        for name in ("", SERVICE):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        app.state.settings = settings
        app.state.session_factory = factory
        app.state.fleet = fleet
        app.state.writer = writer
        app.state.grpc_port = port
        log.info("gRPC listening on %s:%d", settings.grpc_host, port)
        try:
            yield
        finally:
            await health_servicer.enter_graceful_shutdown()
            for session in list(fleet.sessions.values()):
                session.close()
            await grpc_server.stop(grace=1.0)
            await fleet.stop()
            await writer.stop(timeout_s=settings.persist_shutdown_s)
            engine.dispose()

    app = FastAPI(
        title="AGFT",
        version=server_version(),
        description="GPU clock control plane for LLM serving fleets",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(health_router)
    app.include_router(web_router(app))
    return app

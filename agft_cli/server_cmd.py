"""`agft server`: uvicorn serving create_app(settings)."""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from server.app import create_app
from server.settings import Settings


def settings_from_args(args: argparse.Namespace, **extra: Any) -> Settings:
    """Environment first (AGFT_*), then any command-line flag given."""
    overrides = {
        "http_host": args.host,
        "http_port": args.port,
        "grpc_host": args.grpc_host,
        "grpc_port": args.grpc_port,
        "database_url": args.database_url,
        "policy": args.policy,
        "static_clock_mhz": args.static_clock_mhz,
        **extra,
    }
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


def run_server(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    app = create_app(settings)
    print(
        f"AGFT server: http://{settings.http_host}:{settings.http_port}/  "
        f"(gRPC {settings.grpc_host}:{settings.grpc_port})",
        flush=True,
    )
    uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_level="info")
    return 0

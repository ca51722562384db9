"""`agft server`: uvicorn serving create_app(settings)."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from typing import Any

import uvicorn

from server.app import create_app
from server.settings import Settings

# A port another process holds: starting again will not help until it is freed.
EXIT_PORT_IN_USE = 2


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


class PortInUseError(RuntimeError):
    pass


def listen(host: str, port: int, what: str) -> socket.socket:
    """A listening socket, or one line saying why not. No SO_REUSEPORT: a second server on
    the same port must fail at once, not share the port and split the agents with us."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not a server
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        why = "in use (another AGFT server?)" if err.errno == errno.EADDRINUSE else err.strerror
        raise PortInUseError(f"cannot listen for {what} on {host}:{port}: {why}") from None
    return sock


def run_server(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    app = create_app(settings)
    try:
        # Both ports before anything starts: the HTTP socket is the one uvicorn serves;
        # the gRPC port is only probed (grpc binds its own) and binds again at startup.
        http = listen(settings.http_host, settings.http_port, "HTTP")
        listen(settings.grpc_host, settings.grpc_port, "agents (gRPC)").close()
    except PortInUseError as err:
        print(f"agft server: {err}", file=sys.stderr)
        return EXIT_PORT_IN_USE
    print(
        f"AGFT server: http://{settings.http_host}:{settings.http_port}/  "
        f"(gRPC {settings.grpc_host}:{settings.grpc_port})",
        flush=True,
    )
    config = uvicorn.Config(app, log_level="info")
    uvicorn.Server(config).run(sockets=[http])
    return 0

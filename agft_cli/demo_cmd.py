"""`agft demo`: the server on embedded SQLite plus simulated GPU nodes, in one process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys

import uvicorn

from agft_cli.server_cmd import EXIT_PORT_IN_USE, PortInUseError, listen, settings_from_args
from agft_cli.simnode import agent_config_for, start_sim_node
from node_agent.agent import Agent
from server.app import create_app
from server.auth.store import create_api_token, create_node_token
from sim.node import SimulatedNode


async def _demo(args: argparse.Namespace) -> None:
    settings = settings_from_args(args)
    app = create_app(settings)
    http = listen(settings.http_host, settings.http_port, "HTTP")
    listen(settings.grpc_host, settings.grpc_port, "agents (gRPC)").close()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serve = asyncio.create_task(server.serve(sockets=[http]))
    while not server.started:
        if serve.done():
            serve.result()  # bind failure etc.: raise it
            return
        await asyncio.sleep(0.05)

    nodes: list[SimulatedNode] = []
    agents: list[Agent] = []
    grpc_address = f"{settings.grpc_host}:{app.state.grpc_port}"
    for n in range(args.nodes):
        name = f"sim-node-{n}"
        node = await asyncio.to_thread(
            start_sim_node, args, name, args.instances_per_node, args.seed + n
        )
        nodes.append(node)
        # Closed by default, the demo too: each simulated node gets its own token.
        _, token = create_node_token(app.state.session_factory, name)
        config = dataclasses.replace(
            agent_config_for(node, grpc_address, name, args.front_door), token=token
        )
        agents.append(Agent(config, node.backend))
    agent_tasks = [asyncio.create_task(a.run()) for a in agents]
    _, admin_token = create_api_token(app.state.session_factory, "admin", "demo admin")
    base = f"http://{settings.http_host}:{settings.http_port}"
    print(
        f"AGFT demo: {args.nodes} simulated node(s) x {args.instances_per_node} instances "
        f"({args.gpu} / {args.model}), database {settings.database_url}\n"
        f"  dashboard  {base}/  (log in at {base}/login with the admin token below)\n"
        f"  REST API   {base}/docs  (Authorization: Bearer <token>)\n"
        f"  agents     gRPC {grpc_address}, one node token each, plaintext on loopback "
        "(TLS: docs/DEPLOY.md)\n"
        f"  admin token:\n  {admin_token}\n"
        "Ctrl-C stops the demo; agents reset their GPUs to default clocks on the way out.",
        flush=True,
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if args.duration is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        else:
            await stop.wait()
    finally:
        for agent in agents:
            agent.stop()
        await asyncio.gather(*agent_tasks, return_exceptions=True)
        server.should_exit = True
        await serve
        for node in nodes:
            node.stop()


def run_demo(args: argparse.Namespace) -> int:
    try:
        asyncio.run(_demo(args))
    except PortInUseError as err:
        print(f"agft demo: {err}", file=sys.stderr)
        return EXIT_PORT_IN_USE
    return 0

"""`agft` command line. Subcommands import their modules lazily, so `agft agent` runs
with the agent's dependencies only (no FastAPI, SQLAlchemy, ... on a GPU node)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence


def _add_server_args(p: argparse.ArgumentParser, port: int | None, grpc_port: int | None) -> None:
    p.add_argument("--host", help="HTTP bind address (AGFT_HTTP_HOST, default 127.0.0.1)")
    p.add_argument(
        "--port", type=int, default=port, help="HTTP port (AGFT_HTTP_PORT, default 8000)"
    )
    p.add_argument("--grpc-host", help="gRPC bind address (AGFT_GRPC_HOST, default 127.0.0.1)")
    p.add_argument(
        "--grpc-port", type=int, default=grpc_port, help="gRPC port (AGFT_GRPC_PORT, default 50051)"
    )
    p.add_argument(
        "--database-url", help="SQLAlchemy URL (AGFT_DATABASE_URL, default sqlite:///agft.db)"
    )
    p.add_argument(
        "--policy",
        help="controller of instances no SLO policy covers: agft, agft-paper, rule, static, "
        "default (AGFT_POLICY, default agft)",
    )
    p.add_argument(
        "--static-clock-mhz", type=int, help="clock of the static policy (default: none)"
    )


def _add_sim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpu", default="h100-sxm", help="simulated GPU profile (h100-sxm, a100-sxm, h100-nvl)"
    )
    p.add_argument(
        "--model",
        default="llama-3.1-8b",
        help="simulated model profile (llama-3.1-8b, llama-2-70b)",
    )
    p.add_argument(
        "--trace", help="Azure-schema CSV to replay (default: the shipped Azure conv 2023 trace)"
    )
    p.add_argument(
        "--rate-scale",
        type=float,
        default=2.0,
        help="multiply the trace's request rate (per node, split over its instances)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--front-door",
        choices=("none", "load", "router"),
        default="none",
        help="the agent's fast loop on each simulated instance: none (default; the clock "
        "moves once a window), load (vLLM's GET /load, in-flight count) or router (a "
        "router's dynamo_frontend_queued_requests, until first token)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agft", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = sub.add_parser(
        "server",
        help="run the control-plane server (REST + gRPC)",
        description="Run the AGFT server: REST API, dashboard and the agent gRPC endpoint.",
    )
    _add_server_args(server, None, None)

    agent = sub.add_parser(
        "agent",
        help="run a node agent",
        description="Run the node agent: stream GPU and serving telemetry, apply clock commands. "
        "Settings come from a TOML file (--config; every key in deploy/agent.example.toml), "
        "then AGFT_AGENT_<KEY> environment variables (e.g. AGFT_AGENT_NODE_ID; the node token "
        "only as AGFT_AGENT_TOKEN or token_file), then these flags. "
        "Exit status: 0 ok, 1 the check found problems or the agent stopped on an error, "
        "3 the lease (safety) loop failed and the GPUs were reset, "
        "2 the configuration is wrong.",
    )
    agent.add_argument(
        "--server",
        default=None,
        help="server gRPC address host:port (AGFT_AGENT_SERVER, default 127.0.0.1:50051)",
    )
    agent.add_argument("--node-id", help="node identity (AGFT_AGENT_NODE_ID, default: hostname)")
    agent.add_argument(
        "--config",
        metavar="FILE",
        help="agent config file, TOML (see deploy/agent.example.toml)",
    )
    agent.add_argument(
        "--instance",
        action="append",
        default=[],
        metavar="SPEC",
        help="serving instance (added to the config file's): "
        "name=vllm-0,url=http://HOST:PORT/metrics,gpus=0+1[,engine=vllm][,model=ID]",
    )
    agent.add_argument(
        "--backend",
        choices=("nvml", "sim"),
        default="nvml",
        help="GPU backend: real NVML, or a simulated GPU serving node (its instances are implied)",
    )
    agent.add_argument(
        "--check",
        action="store_true",
        help="check this node instead of running: read every NVML value the agent uses, "
        "scrape each serving endpoint once, check the token and TLS files; changes nothing; "
        "exit 0 when the agent has what it needs",
    )
    agent.add_argument(
        "--observe-s",
        type=float,
        metavar="N",
        help="with --check (implied): then run the real agent observe-only (every clock write "
        "refused) for N seconds, and exit",
    )
    agent.add_argument(
        "--sim-instances", type=int, default=2, help="instances on the simulated node"
    )
    _add_sim_args(agent)

    demo = sub.add_parser(
        "demo",
        help="server on SQLite plus simulated GPU nodes, in one command",
        description="Run the server (embedded SQLite) and N simulated GPU nodes "
        "replaying a real trace.",
    )
    _add_server_args(demo, 8000, 50051)
    demo.add_argument("--nodes", type=int, default=2, help="simulated nodes")
    demo.add_argument("--instances-per-node", type=int, default=2)
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    _add_sim_args(demo)

    # Listed for --help; main() hands their arguments to their own parsers.
    sub.add_parser("sim", help="simulator tools: sweep, calibrate, replay, profiles")
    sub.add_parser("bench", help="benchmark policies on traces in simulated time")
    sub.add_parser(
        "loadtest", help="one server process against many synthetic agents: latency, losses"
    )

    from agft_cli.token_cmd import add_api_parser
    from agft_cli.token_cmd import add_parser as add_token_parser

    add_token_parser(sub)
    add_api_parser(sub)

    sub.add_parser(
        "migrate",
        help="apply database migrations (alembic upgrade head)",
        description="Apply the database migrations to AGFT_DATABASE_URL.",
    )
    return parser


# Subcommands with their own argparse tree: everything after the name is theirs.
DELEGATED = {"sim": "sim.cli", "bench": "bench.cli", "loadtest": "bench.loadtest.cli"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        module = importlib.import_module(DELEGATED[argv[0]])
        return int(module.main(argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # One line per /metrics scrape is noise, not news; so are Alembic's plugin set-up lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    if args.command == "server":
        from agft_cli.server_cmd import run_server

        return run_server(args)
    if args.command == "agent":
        from agft_cli.agent_cmd import run_agent

        return run_agent(args)
    if args.command == "demo":
        from agft_cli.demo_cmd import run_demo

        return run_demo(args)
    if args.command == "token":
        from agft_cli.token_cmd import run_api_token

        return run_api_token(args)
    if args.command == "node-token":
        from agft_cli.token_cmd import run_node_token

        return run_node_token(args)
    if args.command == "migrate":
        from server.settings import Settings
        from server.store.migrate import upgrade_to_head

        upgrade_to_head(Settings().database_url)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())

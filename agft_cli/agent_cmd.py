"""`agft agent`: the node agent on NVML, or on a simulated GPU serving node.

`agft agent --check [--observe-s N]` checks the node instead of running (node_agent.check);
it never changes a clock, power limit or mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING

from node_agent.agent import Agent, FatalLinkError, SafetyLoopError
from node_agent.config import AgentConfig, ConfigError, load_config, with_instances
from node_agent.gpu.base import GpuBackend, GpuError, GpuUnavailableError

if TYPE_CHECKING:
    from sim.node import SimulatedNode

# Exit statuses: 0 ran (or checked) fine, 1 the check found problems or the agent had to
# stop on an error (a supervisor restarts it), 2 the configuration is wrong (a restart
# cannot help: fix the file).
EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
# The lease loop failed: GPUs were reset; a supervisor (systemd, Kubernetes) restarts us.
EXIT_SAFETY = 3


async def _run(agent: Agent) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, agent.stop)
    await agent.run()


def _config(args: argparse.Namespace) -> AgentConfig:
    """File, then AGFT_AGENT_* variables, then flags (node_agent.config)."""
    return load_config(
        args.config,
        instance_specs=args.instance,
        server=args.server,
        node_id=args.node_id,
    )


def run_agent(args: argparse.Namespace) -> int:
    checking = bool(args.check or args.observe_s is not None)
    if args.observe_s is not None and not args.observe_s > 0:
        print("agft agent: --observe-s: give a number of seconds above 0", file=sys.stderr)
        return EXIT_CONFIG
    sim_node: SimulatedNode | None = None
    backend: GpuBackend | None = None
    try:
        config = _config(args)
        if args.backend == "sim":
            from agft_cli.simnode import agent_config_for, start_sim_node

            if config.instances:
                raise ConfigError(
                    "--backend sim: the simulated node brings its own instances; "
                    "remove --instance and [[instances]]"
                )
            sim_node = start_sim_node(args, config.node_id, args.sim_instances, args.seed)
            backend = sim_node.backend
            config = with_instances(
                config,
                agent_config_for(
                    sim_node, config.server, config.node_id, args.front_door
                ).instances,
            )
        elif not checking:
            if not config.instances:
                raise ConfigError("no serving instance configured ([[instances]] or --instance)")
            from node_agent.gpu.nvml import NvmlBackend

            backend = NvmlBackend()
        if checking:
            return _check(args, config, backend)
        assert backend is not None
        asyncio.run(_run(Agent(config, backend)))
    except ConfigError as err:
        print(f"agft agent: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except SafetyLoopError as err:
        print(f"agft agent: safety loop failed, GPUs reset: {err}", file=sys.stderr)
        return EXIT_SAFETY
    except (GpuError, FatalLinkError) as err:
        print(f"agft agent: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        pass
    finally:
        if sim_node is not None:
            sim_node.stop()
    return EXIT_OK


def _check(args: argparse.Namespace, config: AgentConfig, backend: GpuBackend | None) -> int:
    from node_agent.check import closing_backend, run_check, run_observe

    source = str(args.config) if args.config else "command line and AGFT_AGENT_* variables"
    backend_error = ""
    needs_privilege = args.backend != "sim"
    if backend is None:
        try:
            from node_agent.gpu.nvml import NvmlBackend

            backend = NvmlBackend()
        except GpuError as err:
            backend_error = f"NVML: {type(err).__name__}: {err}"
            if isinstance(err, GpuUnavailableError):
                backend_error += (
                    " (is the NVIDIA driver installed and loaded? in a container: the NVIDIA "
                    "runtime with NVIDIA_DRIVER_CAPABILITIES including utility)"
                )
    with closing_backend(backend if args.backend != "sim" else None):
        result, readonly = run_check(
            config,
            backend,
            source=source,
            needs_privilege=needs_privilege,
            backend_name=(
                f"simulated node ({args.gpu}, {args.model})" if args.backend == "sim" else "NVML"
            ),
            backend_error=backend_error,
        )
        observed = True
        if args.observe_s is not None and readonly is not None and config.instances:
            sys.stdout.flush()
            observed = run_observe(config, readonly, args.observe_s)
    return EXIT_OK if result.ok and observed else EXIT_FAILED

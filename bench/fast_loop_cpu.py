"""What the agent's fast loop costs in CPU, polling real HTTP front doors in real time.

`python -m bench.fast_loop_cpu [--instances N] [--seconds S] [--poll-s P] [--source load|router]`
starts a real-time simulated node (its instances answer GET /load and a router's /metrics
over loopback HTTP), locks every instance under a lease that allows a boost, and runs the
agent's own FastLoop with its own HTTP readers for S seconds. It prints the loop thread's
CPU per instance (client side: the simulated servers' CPU is not the agent's) and the
polls it made, as the agent reports them in each window's ReflexWindow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time

from agft.v1 import agent_pb2 as pb
from agft_cli.simnode import front_door_for
from node_agent.agent import FAST_READ_TIMEOUT_S
from node_agent.clocks import ClockController
from node_agent.reflex import FastLoop
from sim.node import SimulatedNode
from sim.workload import FixedLengths, PoissonWorkload


def measure(instances: int, seconds: float, poll_s: float, source: str) -> dict[str, object]:
    workload = PoissonWorkload(4.0 * instances, FixedLengths(1000, 200))
    node = SimulatedNode.create(instances=instances, workload=workload, clock="realtime")
    node.start()
    try:
        gpus = {i.name: tuple(i.gpu_indices) for i in node.instances}
        clocks = ClockController(node.backend, gpus)
        clocks.start()
        top = max(node.backend.supported_sm_clocks_mhz(0, node.backend.default_memory_clock_mhz(0)))
        for i in node.instances:
            ack = clocks.set_clocks(
                pb.SetClocks(
                    command_id=f"cpu-{i.name}",
                    instance=i.name,
                    min_sm_clock_mhz=1200,
                    max_sm_clock_mhz=1200,
                    lease_s=seconds + 30,
                    reflex=pb.Reflex(boost_sm_clock_mhz=top, hold_s=0.1),
                )
            )
            if not ack.ok:
                raise RuntimeError(ack.error)
        doors = {}
        for i in node.instances:
            spec = front_door_for(i, source)
            assert spec is not None
            doors[i.name] = dataclasses.replace(spec, poll_s=poll_s)
        loop = FastLoop.over_http(clocks, doors, FAST_READ_TIMEOUT_S)
        stop = threading.Event()
        thread = threading.Thread(target=loop.run, args=(stop,))
        wall0 = time.perf_counter()
        thread.start()
        time.sleep(seconds)
        stop.set()
        thread.join()
        wall = time.perf_counter() - wall0
        windows = [loop.take_window(i.name) for i in node.instances]
        polls = sum(w.polls for w in windows if w is not None)
        failed = sum(w.polls_failed for w in windows if w is not None)
        cpu_s = sum(w.cpu_s for w in windows if w is not None)
        boosted = sum(w.boosted_s for w in windows if w is not None)
        clocks.reset_all("measurement done")
    finally:
        node.stop()
    return {
        "instances": instances,
        "seconds": round(wall, 2),
        "poll_s": poll_s,
        "source": source,
        "polls_per_s_per_instance": round(polls / wall / instances, 1),
        "polls_failed": failed,
        "cpu_pct_per_instance": round(100 * cpu_s / wall / instances, 2),
        "cpu_us_per_poll": round(1e6 * cpu_s / max(polls, 1), 1),
        "boost_share": round(boosted / wall / instances, 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fast_loop_cpu", description=__doc__)
    p.add_argument("--instances", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--poll-s", type=float, default=0.02)
    p.add_argument("--source", choices=("load", "router"), default="load")
    args = p.parse_args(argv)
    result = measure(args.instances, args.seconds, args.poll_s, args.source)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What one telemetry window costs the server, stage by stage, before any queueing.

    python -m bench.loadtest.floor_probe [--nodes 125,1250] [--seconds 20]

Issue 12 asks one server process to decide for 10,000 instances a second. This probe
prices the stages of that path apart, on this machine, so the budget per window (at
most 100 us of one core at 10,000 windows/s) can be compared with what each stage takes:

* **in process** (medians of repeated passes over the load test's synthetic windows):
  parsing a node's Telemetry message of 8 windows, validating a window into an
  Observation, and the decider's whole per-window work (validate, decide, build the
  rows) with the static controller and with agft past its warm-up; an agft instance's
  learning saved and restored once its references are full;
* **over gRPC** (a real aio server in this process, the load test's message sizes): a
  null servicer that only receives and parses each node's message, driven by a client
  process holding one stream per node at one message a second, its server CPU read
  over the steady part; with `--reply`, the servicer also answers each message with one
  command message, as a controller that locks clocks does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Protocol

import grpc

from agft.v1 import agent_pb2 as pb
from agft.v1 import agent_pb2_grpc as pb_grpc
from bench.loadtest import synthetic
from server.control.agft.policy import AgftPolicy
from server.control.policy import ClockArms, Policy, SloTargets
from server.control.static import StaticPolicy
from server.fleet import validation
from server.fleet.decider import decide_window
from server.fleet.runtime import InstanceRuntime
from server.store.database import json_strict

GPUS = 8


class EventLike(Protocol):
    def set(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool: ...


PASSES = 7


def _windows(n: int, seed: int, clock_mhz: int | None) -> list[pb.InstanceWindow]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        start = 1.8e9 + k
        lock = (clock_mhz, clock_mhz) if clock_mhz else None
        w = synthetic.window(k % GPUS, start, start + 1.0, rng, lock)
        if clock_mhz:
            synthetic.at_clock(w, clock_mhz)
        out.append(w)
    return out


def _per_item_us(run: Callable[[], int]) -> float:
    """Median over passes of one pass's CPU per item, in microseconds."""
    samples = []
    for _ in range(PASSES):
        t0 = time.process_time_ns()
        items = run()
        samples.append((time.process_time_ns() - t0) / items / 1e3)
    return statistics.median(samples)


def _runtime(policy: Policy) -> InstanceRuntime:
    arms = ClockArms(
        supported_mhz=tuple(sorted(synthetic.SUPPORTED_MHZ)), default_mhz=synthetic.DEFAULT_MHZ
    )
    return InstanceRuntime(
        instance_id=1, name=synthetic.instance_name(0), gpu_indices=(0,), arms=arms,
        policy=policy, calibrate=True,
    )  # fmt: skip


def in_process() -> dict[str, float]:
    windows = _windows(800, 1, 1410)
    for w in windows:
        w.instance, w.gpus[0].index = synthetic.instance_name(0), 0
    message = pb.AgentMessage(telemetry=pb.Telemetry(windows=windows[:GPUS])).SerializeToString()
    now = datetime.now(UTC)

    def parse() -> int:
        for _ in range(500):
            pb.AgentMessage.FromString(message)
        return 500 * GPUS

    def validate() -> int:
        for w in windows:
            validation.observation(w, (0,))
        return len(windows)

    def decide_us(make: Callable[[], Policy], warm: int) -> float:
        """A fresh instance's windows after `warm` of them: the steady state is what a
        fleet pays, not the warm-up."""
        runtime = _runtime(make())
        for w in windows[:warm]:
            decide_window(runtime, w, now=now, lease_s=5.0)
        t0 = time.process_time_ns()
        for w in windows[warm:]:
            decide_window(runtime, w, now=now, lease_s=5.0)
        return (time.process_time_ns() - t0) / (len(windows) - warm) / 1e3

    results = {
        "parse_us_per_window": _per_item_us(parse),
        "validate_us_per_window": _per_item_us(validate),
    }
    slo = SloTargets()
    for name, make in (
        ("static", lambda: StaticPolicy(1410)),
        ("agft", lambda: AgftPolicy(slo)),
    ):
        samples = [decide_us(make, 100) for _ in range(PASSES)]
        results[f"decide_window_{name}_us"] = statistics.median(samples)
    results.update(_agft_state_costs(windows, now))
    return results


def _agft_state_costs(windows: list[pb.InstanceWindow], now: datetime) -> dict[str, float]:
    """An agft instance's learning saved (state() and the JSON the writer makes of it)
    and restored (JSON parsed, load_state), once its 900-window references are full: the
    server saves every instance that decided each AGFT_STATE_SAVE_INTERVAL_S (5 s), and
    a replica taking nodes over restores theirs."""
    runtime = _runtime(AgftPolicy(SloTargets()))
    for w in windows * 2:  # 1,600 windows: past the references' 900
        decide_window(runtime, w, now=now, lease_s=5.0)
    policy = runtime.policy
    saves, loads = [], []
    for _ in range(PASSES):
        t0 = time.process_time_ns()
        for _ in range(20):
            text = json_strict(policy.state())
        t1 = time.process_time_ns()
        for _ in range(20):
            AgftPolicy(SloTargets()).load_state(json.loads(text))
        t2 = time.process_time_ns()
        saves.append((t1 - t0) / 20 / 1e3)
        loads.append((t2 - t1) / 20 / 1e3)
    return {
        "agft_state_bytes": float(len(text)),
        "agft_state_save_us": statistics.median(saves),
        "agft_state_load_us": statistics.median(loads),
    }


# ---- the gRPC floor ---------------------------------------------------------------------
class _NullLink(pb_grpc.AgentLinkServicer):
    def __init__(self, reply: bool) -> None:
        self.windows = 0
        self.reply = reply
        self.command = pb.ServerMessage(
            commands=pb.Commands(
                commands=[
                    pb.Command(
                        set_clocks=pb.SetClocks(
                            command_id=f"c-{i}",
                            instance=synthetic.instance_name(i),
                            min_sm_clock_mhz=1410,
                            max_sm_clock_mhz=1410,
                            lease_s=5.0,
                            reason="static: 1410 MHz",
                        ),
                    )
                    for i in range(GPUS)
                ]
            )
        )

    async def Connect(
        self, request_iterator: AsyncIterator[pb.AgentMessage], context: object
    ) -> AsyncIterator[pb.ServerMessage]:
        async for message in request_iterator:
            self.windows += len(message.telemetry.windows)
            if self.reply:
                yield self.command


def _client(port: int, nodes: int, seconds: float, started: EventLike) -> None:
    async def node(stub: pb_grpc.AgentLinkStub, k: int, until: float) -> None:
        rng = random.Random(k)
        template = pb.AgentMessage(
            telemetry=pb.Telemetry(
                windows=[synthetic.window(g, 0.0, 1.0, rng, None) for g in range(GPUS)]
            )
        )
        queue: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()

        async def messages() -> AsyncIterator[pb.AgentMessage]:
            while (m := await queue.get()) is not None:
                yield m

        call = stub.Connect(messages())
        drain = asyncio.ensure_future(_drain(call))
        await asyncio.sleep(rng.random())  # spread over the second, as real nodes are
        while time.monotonic() < until:
            queue.put_nowait(template)
            await asyncio.sleep(1.0)
        queue.put_nowait(None)
        await drain

    async def main() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.AgentLinkStub(channel)
            until = time.monotonic() + seconds
            started.set()
            await asyncio.gather(*(node(stub, k, until) for k in range(nodes)))

    asyncio.run(main())


async def _drain(call: grpc.aio.StreamStreamCall[pb.AgentMessage, pb.ServerMessage]) -> None:
    # The probe's server stops once it has measured: a stream cut then is expected.
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for _ in call:
            pass


async def grpc_floor(nodes: int, seconds: float, reply: bool) -> dict[str, float]:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    link = _NullLink(reply)
    pb_grpc.add_AgentLinkServicer_to_server(link, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    started = mp.get_context("spawn").Event()
    client = mp.get_context("spawn").Process(
        target=_client, args=(port, nodes, seconds, started), daemon=True
    )
    client.start()
    await asyncio.to_thread(started.wait, 60.0)
    await asyncio.sleep(min(5.0, seconds / 4))  # every stream open and sending
    w0, c0, t0 = link.windows, time.process_time(), time.monotonic()
    await asyncio.sleep(seconds / 2)
    w1, c1, t1 = link.windows, time.process_time(), time.monotonic()
    await asyncio.to_thread(client.join, seconds + 30)
    await server.stop(1.0)
    windows_per_s = (w1 - w0) / (t1 - t0)
    cpu = (c1 - c0) / (t1 - t0)
    return {
        "nodes": nodes,
        "windows_per_s": windows_per_s,
        "server_cpu_pct": 100.0 * cpu,
        "us_per_window": 1e6 * cpu / windows_per_s if windows_per_s else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--nodes", default="125,1250", help="node counts for the gRPC floor (empty: none)"
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--reply", action="store_true", help="answer each message")
    args = parser.parse_args()
    for name, value in in_process().items():
        print(f"{name}: {value:.1f}")
    for nodes in (int(n) for n in args.nodes.split(",") if n):
        r = asyncio.run(grpc_floor(nodes, args.seconds, args.reply))
        print(
            f"grpc null server{' with replies' if args.reply else ''}, {nodes} nodes "
            f"({nodes * GPUS} instances): {r['windows_per_s']:.0f} windows/s, "
            f"server CPU {r['server_cpu_pct']:.1f} %, {r['us_per_window']:.1f} us a window"
        )


if __name__ == "__main__":
    main()

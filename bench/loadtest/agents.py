"""Many lightweight agents in one process: one real gRPC stream per node, synthetic windows.

Each node speaks the agent's protocol exactly (Hello, a Telemetry of all its instances'
windows every window, an ack for every command, with the clocks it was told), but nothing
is measured: windows come from a pool of synthetic ones (bench/loadtest/synthetic.py) with
their times set, so a few processes can stand in for a thousand nodes. Nodes start spread
over one window, as real agents' clocks are.

What each process counts comes back as one dict: windows sent, commands received, acks
sent, errors, and the round trip from a window sent to the command it caused.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from agft.v1 import agent_pb2 as pb
from agft.v1 import agent_pb2_grpc as pb_grpc
from bench.loadtest import synthetic

POOL = 16  # synthetic windows per GPU index, reused with fresh times
DRAIN_S = 60.0


@dataclass(slots=True)
class NodeCounts:
    windows_sent: int = 0
    commands: int = 0
    acks_sent: int = 0
    errors: int = 0
    connected: bool = False
    unsent: int = 0  # messages still queued when the node gave up waiting
    rtt_s: list[float] = field(default_factory=list)


class _Node:
    def __init__(
        self,
        address: str,
        node_id: str,
        token: str,
        gpus: int,
        window_s: float,
        pool: list[list[pb.InstanceWindow]],
    ) -> None:
        self.address = address
        self.node_id = node_id
        self.token = token
        self.gpus = gpus
        self.window_s = window_s
        self.pool = pool
        self.counts = NodeCounts()
        self._seq = 0
        self._outbox: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        self._locks: dict[str, tuple[int, int] | None] = {}
        self._sent_at: dict[str, float] = {}  # instance -> when its last window left

    def _put(self, **body: Any) -> None:
        self._seq += 1
        self._outbox.put_nowait(pb.AgentMessage(seq=self._seq, **body))

    async def _requests(self) -> AsyncIterator[pb.AgentMessage]:
        while True:
            msg = await self._outbox.get()
            if msg is None:
                return
            # Counted as they leave, not as they are queued: an ack queued after the end
            # of the stream was never sent.
            kind = msg.WhichOneof("body")
            if kind == "telemetry":
                self.counts.windows_sent += len(msg.telemetry.windows)
            elif kind == "ack":
                self.counts.acks_sent += 1
            yield msg

    async def run(self, start_at: float, stop_at: float) -> None:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = pb_grpc.AgentLinkStub(channel)
            self._put(hello=synthetic.hello(self.node_id, self.gpus))
            call = stub.Connect(
                self._requests(), metadata=(("authorization", f"Bearer {self.token}"),)
            )
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
                raise RuntimeError(f"{self.node_id}: no Welcome")
            self.counts.connected = True
            reader = asyncio.create_task(self._read(call))
            try:
                await self._windows(stop_at)
                # What is still queued here went out late, not never: a server behind slows
                # its agents (backpressure). Wait for it to leave (60 s at most), then for
                # the last commands.
                deadline = time.monotonic() + DRAIN_S
                # asyncio.Queue has no "empty" event: a 0.1 s poll, once, at the end.
                while not self._outbox.empty() and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                self.counts.unsent = self._outbox.qsize()
                await asyncio.sleep(min(2.0, 2 * self.window_s))
            finally:
                # End of requests: the server closes the stream once it has read them all,
                # and the reader sees the end.
                self._outbox.put_nowait(None)
                # The server ends the stream only once it has read every message: until
                # then a message may be in flight, and cancelling would drop it.
                with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                    await asyncio.wait_for(asyncio.shield(reader), DRAIN_S)
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await reader

    async def _windows(self, stop_at: float) -> None:
        k = hash(self.node_id) % POOL
        tick = time.monotonic()
        wall = time.time()
        while True:
            tick += self.window_s
            if tick > stop_at:
                return
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            start, end = wall, wall + self.window_s
            wall = end
            telemetry = pb.Telemetry()
            telemetry.windows.extend(self.pool[g][k % POOL] for g in range(self.gpus))
            k += 1
            now = time.monotonic()
            for w in telemetry.windows:
                w.window_start_s, w.window_end_s = start, end
                lock = self._locks.get(w.instance)
                g = w.gpus[0]
                if lock is None:
                    g.ClearField("locked_min_sm_clock_mhz")
                    g.ClearField("locked_max_sm_clock_mhz")
                    g.sm_clock_mhz = synthetic.DEFAULT_MHZ
                else:
                    g.locked_min_sm_clock_mhz, g.locked_max_sm_clock_mhz = lock
                    g.sm_clock_mhz = lock[1]
                # Power falls with the clock and token gaps grow, as on a GPU, so the
                # controller finds lower clocks worth it and holds locks (and renews
                # their leases every window) as it would on a real fleet.
                synthetic.at_clock(w, g.sm_clock_mhz)
                self._sent_at[w.instance] = now
            self._put(telemetry=telemetry)

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                return
            kind = msg.WhichOneof("body")
            if kind == "error":
                self.counts.errors += 1
                continue
            if kind not in ("set_clocks", "reset_clocks"):
                continue
            cmd = getattr(msg, kind)
            sent = self._sent_at.pop(cmd.instance, None)
            if sent is not None:
                self.counts.rtt_s.append(time.monotonic() - sent)
            self.counts.commands += 1
            if kind == "set_clocks":
                self._locks[cmd.instance] = (cmd.min_sm_clock_mhz, cmd.max_sm_clock_mhz)
            else:
                self._locks[cmd.instance] = None
            lock = self._locks[cmd.instance]
            gpu = int(cmd.instance.rsplit("-", 1)[1])
            applied = pb.AppliedClocks(gpu_index=gpu, sm_clock_mhz=lock[1] if lock else 1980)
            if lock is not None:
                applied.locked_min_sm_clock_mhz, applied.locked_max_sm_clock_mhz = lock
            self._put(
                ack=pb.CommandAck(
                    command_id=cmd.command_id,
                    instance=cmd.instance,
                    ok=True,
                    applied=[applied],
                    applied_at_s=time.time(),
                )
            )


def run_nodes(
    address: str,
    nodes: list[tuple[str, str]],
    gpus: int,
    window_s: float,
    duration_s: float,
    seed: int,
) -> dict[str, Any]:
    """Run every (node id, token) for duration_s of windows; returns the counts summed."""
    return asyncio.run(_run(address, nodes, gpus, window_s, duration_s, seed))


async def _run(
    address: str,
    nodes: list[tuple[str, str]],
    gpus: int,
    window_s: float,
    duration_s: float,
    seed: int,
) -> dict[str, Any]:
    rng = random.Random(seed)
    pool = [
        [synthetic.window(g, 0.0, window_s, rng, None) for _ in range(POOL)] for g in range(gpus)
    ]
    t0 = time.monotonic() + 0.5
    # Connections spread over a few seconds, then windows spread over one window each.
    ramp_s = min(5.0, 0.01 * len(nodes))
    runners = [_Node(address, node_id, token, gpus, window_s, pool) for node_id, token in nodes]
    tasks = [
        asyncio.create_task(r.run(t0 + ramp_s * i / max(1, len(runners)), t0 + ramp_s + duration_s))
        for i, r in enumerate(runners)
    ]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    total = NodeCounts()
    for r in runners:
        c = r.counts
        total.windows_sent += c.windows_sent
        total.commands += c.commands
        total.acks_sent += c.acks_sent
        total.errors += c.errors
        total.unsent += c.unsent
        total.rtt_s.extend(c.rtt_s)
    return {
        "nodes": len(runners),
        "connected": sum(r.counts.connected for r in runners),
        "windows_sent": total.windows_sent,
        "commands": total.commands,
        "acks_sent": total.acks_sent,
        "errors": total.errors,
        "unsent_messages": total.unsent,
        "rtt_s": total.rtt_s,
        "failures": failures[:5],
    }

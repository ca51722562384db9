"""Many lightweight agents in one process: one real gRPC stream per node, synthetic windows.

Each node speaks the agent's protocol exactly (Hello, a Telemetry of all its instances'
windows every window, an ack for every command, with the clocks it was told), but nothing
is measured: windows come from a pool of synthetic ones (bench/loadtest/synthetic.py) with
their times set, so a few processes can stand in for a thousand nodes. Nodes start spread
over one window, as real agents' clocks are. Like node_agent, a node numbers its windows,
keeps them until the server says they are stored, and on losing its stream reconnects to
the next replica's address and sends the unstored ones again.

What each process counts comes back as one dict: windows made and sent (and sent again),
commands received, acks sent, errors, the round trip from a window sent to the command it
caused, and for each node that lost its stream when, and when a window sent on the next
one was stored (control back).
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

from agft.commands import commands_of
from agft.v1 import agent_pb2 as pb
from agft.v1 import agent_pb2_grpc as pb_grpc
from bench.loadtest import synthetic
from node_agent.resend import ResendBuffer

POOL = 16  # synthetic windows per GPU index, reused with fresh times
DRAIN_S = 60.0
BUFFER_S = 900.0  # as node_agent's resend_buffer_s default
RECONNECT_S = 0.2


@dataclass(slots=True)
class NodeCounts:
    windows_measured: int = 0  # windows made (each must end up stored, once)
    windows_sent: int = 0  # sends, re-sends included
    windows_resent: int = 0  # sent again after a reconnect
    commands: int = 0
    acks_sent: int = 0
    errors: int = 0
    connected: bool = False
    sessions: int = 0
    unstored: int = 0  # windows the server never said it stored (it should be 0)
    rtt_s: list[float] = field(default_factory=list)
    # Wall time a stream was lost, and when a window sent on the next was stored.
    lost_at: list[float] = field(default_factory=list)
    regained_at: list[float] = field(default_factory=list)
    # The failover's steps in between: Welcome from the next replica, the first fresh
    # window sent on its stream (after the re-sent ones).
    welcomed_at: list[float] = field(default_factory=list)
    fresh_sent_at: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _Stream:
    """One stream's own state: a dead stream's request iterator, which gRPC may still be
    pulling from, must not take the next stream's messages."""

    outbox: asyncio.Queue[pb.AgentMessage | None] = field(default_factory=asyncio.Queue)
    welcomed: bool = False  # windows go out only after Welcome (it says what is stored)
    sent_through: int = 0
    first_fresh: int = 0  # the first window this stream sent fresh (0: none yet)


class _Node:
    """One node's agent: it measures (makes) a window every window whatever the link
    does, keeps it until the server says it is stored, and reconnects, in turn over the
    replicas' addresses, when its stream is lost (as node_agent does)."""

    def __init__(
        self,
        addresses: list[str],
        node_id: str,
        token: str,
        gpus: int,
        window_s: float,
        pool: list[list[pb.InstanceWindow]],
    ) -> None:
        self.addresses = addresses
        self.node_id = node_id
        self.token = token
        self.gpus = gpus
        self.window_s = window_s
        self.pool = pool
        self.counts = NodeCounts()
        self.boot_id = random.getrandbits(63) or 1
        self.buffer = ResendBuffer(max(1, int(BUFFER_S / window_s)))
        self._seq = 0
        self._stream_state = _Stream()
        self._new = asyncio.Event()
        self._session = 0
        self._locks: dict[str, tuple[int, int] | None] = {}
        self._sent_at: dict[str, float] = {}  # instance -> when its last window left
        self._acks_since_window: list[pb.CommandAck] = []  # again in the next window

    def _put(self, **body: Any) -> None:
        self._seq += 1
        self._stream_state.outbox.put_nowait(pb.AgentMessage(seq=self._seq, **body))
        self._new.set()

    async def _requests(
        self, hello: pb.AgentMessage, state: _Stream
    ) -> AsyncIterator[pb.AgentMessage]:
        yield hello
        while True:
            self._new.clear()
            if not state.outbox.empty():
                msg = state.outbox.get_nowait()
                if msg is None:
                    return
                # Counted as they leave, not as they are queued: an ack queued after the
                # end of the stream was never sent.
                body = msg.WhichOneof("body")
                if body == "ack":
                    self.counts.acks_sent += 1
                elif body == "acks":
                    self.counts.acks_sent += len(msg.acks.acks)
                yield msg
                continue
            due = self.buffer.next_to_send(state.sent_through, self._session)
            if state.welcomed and due is not None:
                state.sent_through, telemetry = due
                if telemetry.replayed:
                    self.counts.windows_resent += len(telemetry.windows)
                elif not state.first_fresh:
                    state.first_fresh = state.sent_through
                    if len(self.counts.fresh_sent_at) < len(self.counts.lost_at):
                        self.counts.fresh_sent_at.append(time.time())
                self._seq += 1
                now = time.monotonic()
                for w in telemetry.windows:
                    self._sent_at[w.instance] = now
                self.counts.windows_sent += len(telemetry.windows)
                yield pb.AgentMessage(seq=self._seq, telemetry=telemetry)
                continue
            await self._new.wait()

    async def run(self, start_at: float, stop_at: float) -> None:
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        windows = asyncio.create_task(self._windows(stop_at))
        turn = 0
        try:
            while True:
                address = self.addresses[turn % len(self.addresses)]
                try:
                    if await self._stream(address, windows):
                        return
                except (grpc.aio.AioRpcError, OSError, RuntimeError):
                    pass
                if self._stream_state.welcomed:  # a stream that had been working, lost
                    self.counts.lost_at.append(time.time())
                turn += 1  # that replica is gone or refused: the next one
                if windows.done() and time.monotonic() > stop_at + DRAIN_S:
                    return
                await asyncio.sleep(RECONNECT_S)
        finally:
            windows.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await windows
            self.counts.unstored = self.buffer.last_seq - self.buffer.stored_through

    async def _stream(self, address: str, windows: asyncio.Task[None]) -> bool:
        """One stream; True once every window is stored and the stream ended cleanly."""
        state = self._stream_state = _Stream()
        hello = synthetic.hello(self.node_id, self.gpus)
        hello.boot_id = self.boot_id
        self._seq = 1
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.AgentLinkStub(channel)
            call = stub.Connect(
                self._requests(pb.AgentMessage(seq=1, hello=hello), state),
                metadata=(("authorization", f"Bearer {self.token}"),),
            )
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
                raise RuntimeError(f"{self.node_id}: no Welcome")
            self.counts.connected = True
            self.counts.sessions += 1
            self._session += 1
            self.buffer.stored(first.welcome.stored_through_seq)
            state.welcomed = True
            if len(self.counts.welcomed_at) < len(self.counts.lost_at):
                self.counts.welcomed_at.append(time.time())
            self._new.set()
            reader = asyncio.create_task(self._read(call))
            try:
                while not (windows.done() and self.buffer.stored_through >= self.buffer.last_seq):
                    if reader.done():
                        reader.result()  # the stream ended: raise why
                        return False
                    await asyncio.sleep(0.1)
                # Every window stored: the last commands, then the end of the stream.
                await asyncio.sleep(min(2.0, 2 * self.window_s))
                return True
            finally:
                # End of requests: the server closes the stream once it has read them all.
                state.outbox.put_nowait(None)
                self._new.set()
                # (It ends with OSError at the end of the stream: that is the end we want.)
                with contextlib.suppress(TimeoutError, OSError, grpc.aio.AioRpcError):
                    await asyncio.wait_for(asyncio.shield(reader), 10.0)
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, OSError, grpc.aio.AioRpcError):
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
            telemetry.acks.extend(self._acks_since_window)
            self._acks_since_window.clear()
            self.buffer.add(telemetry, self._session)
            self.counts.windows_measured += len(telemetry.windows)
            self._new.set()

    async def _read(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                raise OSError("the server ended the stream")
            kind = msg.WhichOneof("body")
            if kind == "error":
                self.counts.errors += 1
                continue
            if kind == "stored":
                if msg.stored.boot_id == self.boot_id:
                    self.buffer.stored(msg.stored.through_seq)
                    if (
                        self.counts.lost_at
                        and len(self.counts.regained_at) < len(self.counts.lost_at)
                        and self._stream_state.first_fresh
                        and msg.stored.through_seq >= self._stream_state.first_fresh
                    ):
                        # A window sent on this stream is decided and stored: control is
                        # back for this node.
                        self.counts.regained_at.append(time.time())
                continue
            acks = [self._apply(command) for command in commands_of(msg)]
            if not acks:
                continue
            if kind == "commands":  # a node's instances' commands came in one message
                self._put(acks=pb.Acks(acks=acks))
            else:
                self._put(ack=acks[0])
            self._acks_since_window.extend(acks)

    def _apply(self, cmd: pb.SetClocks | pb.ResetClocks) -> pb.CommandAck:
        sent = self._sent_at.pop(cmd.instance, None)
        if sent is not None:
            self.counts.rtt_s.append(time.monotonic() - sent)
        self.counts.commands += 1
        if isinstance(cmd, pb.SetClocks):
            self._locks[cmd.instance] = (cmd.min_sm_clock_mhz, cmd.max_sm_clock_mhz)
        else:
            self._locks[cmd.instance] = None
        lock = self._locks[cmd.instance]
        gpu = int(cmd.instance.rsplit("-", 1)[1])
        applied = pb.AppliedClocks(gpu_index=gpu, sm_clock_mhz=lock[1] if lock else 1980)
        if lock is not None:
            applied.locked_min_sm_clock_mhz, applied.locked_max_sm_clock_mhz = lock
        return pb.CommandAck(
            command_id=cmd.command_id,
            instance=cmd.instance,
            ok=True,
            applied=[applied],
            applied_at_s=time.time(),
        )


def run_nodes(
    addresses: list[str],
    nodes: list[tuple[str, str]],
    gpus: int,
    window_s: float,
    duration_s: float,
    seed: int,
) -> dict[str, Any]:
    """Run every (node id, token) for duration_s of windows; returns the counts summed."""
    return asyncio.run(_run(addresses, nodes, gpus, window_s, duration_s, seed))


async def _run(
    addresses: list[str],
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
    # Each node tries the replicas in its own order, so they share the nodes out.
    runners = [
        _Node(
            addresses[j % len(addresses) :] + addresses[: j % len(addresses)],
            node_id,
            token,
            gpus,
            window_s,
            pool,
        )
        for j, (node_id, token) in enumerate(nodes)
    ]
    tasks = [
        asyncio.create_task(r.run(t0 + ramp_s * i / max(1, len(runners)), t0 + ramp_s + duration_s))
        for i, r in enumerate(runners)
    ]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [repr(r) for r in results if isinstance(r, BaseException)]
    counts = [r.counts for r in runners]
    return {
        "nodes": len(runners),
        "connected": sum(c.connected for c in counts),
        "windows_measured": sum(c.windows_measured for c in counts),
        "windows_sent": sum(c.windows_sent for c in counts),
        "windows_resent": sum(c.windows_resent for c in counts),
        "commands": sum(c.commands for c in counts),
        "acks_sent": sum(c.acks_sent for c in counts),
        "errors": sum(c.errors for c in counts),
        "unstored_windows": sum(c.unstored * gpus for c in counts),
        "sessions": sum(c.sessions for c in counts),
        "rtt_s": [x for c in counts for x in c.rtt_s],
        # Per node that lost its stream: when, and when control came back (None: never).
        "lost_at": [c.lost_at[0] for c in counts if c.lost_at],
        "regained_at": [c.regained_at[0] if c.regained_at else None for c in counts if c.lost_at],
        "welcomed_at": [c.welcomed_at[0] if c.welcomed_at else None for c in counts if c.lost_at],
        "fresh_sent_at": [
            c.fresh_sent_at[0] if c.fresh_sent_at else None for c in counts if c.lost_at
        ],
        "failures": failures[:5],
    }

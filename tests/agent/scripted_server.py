"""A stand-in for the server on loopback gRPC: answers Hello with a chosen Welcome, sends
what a test queues, records everything the agent sends (with arrival times).

It plays "whatever answers as the server", so a test can send values no real server
would (a negative window, a NaN lease) and watch the agent refuse them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc

from agft.v1 import agent_pb2 as pb
from agft.v1 import agent_pb2_grpc as pb_grpc


class ScriptedServer(pb_grpc.AgentLinkServicer):
    def __init__(self, welcome: pb.Welcome) -> None:
        self.welcome = welcome
        self.hellos: list[pb.Hello] = []
        self.received: list[tuple[float, pb.AgentMessage]] = []
        self.outbox: asyncio.Queue[pb.ServerMessage] = asyncio.Queue()
        self.address = ""

    async def Connect(
        self,
        request_iterator: AsyncIterator[pb.AgentMessage],
        context: grpc.aio.ServicerContext[pb.AgentMessage, pb.ServerMessage],
    ) -> AsyncIterator[pb.ServerMessage]:
        first = await anext(request_iterator)
        self.hellos.append(first.hello)
        yield pb.ServerMessage(welcome=self.welcome)

        async def drain() -> None:
            async for msg in request_iterator:
                self.received.append((time.monotonic(), msg))

        reader = asyncio.create_task(drain())
        try:
            while True:
                get = asyncio.create_task(self.outbox.get())
                done, _ = await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    return
                yield get.result()
        finally:
            reader.cancel()

    def send(self, **body: object) -> None:
        self.outbox.put_nowait(pb.ServerMessage(**body))  # type: ignore[arg-type]

    def of_kind(self, kind: str) -> list[pb.AgentMessage]:
        return [m for _, m in self.received if m.WhichOneof("body") == kind]

    async def wait_for(self, kind: str, count: int = 1, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.of_kind(kind)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {count} {kind} message(s)")
            await asyncio.sleep(0.01)


@asynccontextmanager
async def scripted_server(welcome: pb.Welcome) -> AsyncIterator[ScriptedServer]:
    servicer = ScriptedServer(welcome)
    server = grpc.aio.server()
    pb_grpc.add_AgentLinkServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    servicer.address = f"127.0.0.1:{port}"
    await server.start()
    try:
        yield servicer
    finally:
        await server.stop(grace=None)

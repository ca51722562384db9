"""A hand-driven agent stream: send exactly the bytes a test wants, read what comes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from agft.v1 import agent_pb2 as pb

H100_CLOCKS = list(range(1980, 344, -15))


def hello(node_id: str = "raw-node", instances: int = 1) -> pb.Hello:
    return pb.Hello(
        node_id=node_id,
        agent_version="test",
        hostname=node_id,
        gpus=[
            pb.Gpu(
                index=i,
                uuid=f"GPU-{node_id}-{i}",
                name="NVIDIA H100 80GB HBM3",
                supported_sm_clocks_mhz=H100_CLOCKS,
                supported_memory_clocks_mhz=[2619],
                default_sm_clock_mhz=1980,
                default_memory_clock_mhz=2619,
                power_limit_mw=700_000,
            )
            for i in range(instances)
        ],
        instances=[
            pb.ServingInstance(
                name=f"vllm-{i}",
                engine=pb.ENGINE_VLLM,
                metrics_url=f"http://127.0.0.1:1/metrics/{i}",
                model_name="meta-llama/Llama-3.1-8B-Instruct",
                gpu_indices=[i],
            )
            for i in range(instances)
        ],
    )


def window(
    instance: str = "vllm-0", start: float = 1000.0, energy_j: float = 300.0, **serving: Any
) -> pb.InstanceWindow:
    gpu_index = int(instance.rsplit("-", 1)[1]) if instance.startswith("vllm-") else 0
    return pb.InstanceWindow(
        instance=instance,
        window_start_s=start,
        window_end_s=start + 1.0,
        gpus=[
            pb.GpuWindow(
                index=gpu_index, energy_j=energy_j, avg_power_w=energy_j, sm_clock_mhz=1980
            )
        ],
        # Complete by default (load and energy known), so policies may lower clocks.
        serving=pb.ServingWindow(
            **{
                "available": True,
                "num_requests_running": 3,
                "num_requests_waiting": 0,
                "kv_cache_usage": 0.2,
                "generation_tokens": 400,
                **serving,
            }
        ),
    )


class RawStream:
    def __init__(self, address: str, token: str | None = None) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._out: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._seq = 0
        method = self._channel.stream_stream(
            "/agft.v1.AgentLink/Connect",
            request_serializer=lambda b: b,
            response_deserializer=pb.ServerMessage.FromString,
        )
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.call = method(self._requests(), metadata=metadata)
        # One reader for the whole stream: a read that times out must not cancel the call.
        self._inbox: asyncio.Queue[pb.ServerMessage | BaseException] = asyncio.Queue()
        self._reader = asyncio.get_running_loop().create_task(self._read_all())

    async def _read_all(self) -> None:
        try:
            while True:
                msg = await self.call.read()
                if msg is grpc.aio.EOF:
                    self._inbox.put_nowait(AssertionError("server closed the stream"))
                    return
                self._inbox.put_nowait(msg)
        except BaseException as err:  # the RPC's end (AioRpcError) is the test's to see
            self._inbox.put_nowait(err)

    async def _requests(self) -> AsyncIterator[bytes]:
        while True:
            item = await self._out.get()
            if item is None:
                return
            yield item

    def send(self, **body: Any) -> int:
        self._seq += 1
        self._out.put_nowait(pb.AgentMessage(seq=self._seq, **body).SerializeToString())
        return self._seq

    def send_bytes(self, data: bytes) -> None:
        self._out.put_nowait(data)

    async def read(self, wait_s: float = 5.0) -> pb.ServerMessage:
        """The next message; TimeoutError if none within wait_s (the stream stays open)."""
        item = await asyncio.wait_for(self._inbox.get(), wait_s)
        if isinstance(item, BaseException):
            self._inbox.put_nowait(item)  # the stream stays ended for later reads
            raise item
        return item

    async def drain(self, wait_s: float = 0.3) -> list[pb.ServerMessage]:
        """Everything the server sends until it is quiet for wait_s."""
        seen = []
        while True:
            try:
                seen.append(await self.read(wait_s))
            except TimeoutError:
                return seen

    async def read_kind(self, kind: str, wait_s: float = 5.0) -> pb.ServerMessage:
        """Read until a message of this kind arrives (others are collected in .seen)."""
        while True:
            msg = await self.read(wait_s)
            if msg.WhichOneof("body") == kind:
                return msg

    async def close(self) -> None:
        self._out.put_nowait(None)
        self.call.cancel()
        self._reader.cancel()
        await self._channel.close()

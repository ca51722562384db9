"""The node agent: measure every window, stream it, apply commands, keep leases honest.

One long-lived gRPC stream to the server. Reconnects with capped, jittered backoff
and sends Hello again. Leases are enforced locally whatever the link does: if the
server goes quiet, lowered clocks go back to default when their lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable

import grpc
import httpx

from agft.engines import engine_to_wire
from agft.v1 import agent_pb2 as pb
from agft.v1 import agent_pb2_grpc as pb_grpc
from node_agent import __version__
from node_agent.backoff import Backoff
from node_agent.clocks import ClockController
from node_agent.config import AgentConfig
from node_agent.gpu.base import GpuBackend, GpuError
from node_agent.serving.scraper import ServingScraper
from node_agent.window import GpuWindowSampler

log = logging.getLogger(__name__)

# Errors after which retrying cannot help: say so and stop instead of hammering the server.
FATAL_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class FatalLinkError(RuntimeError):
    pass


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        backend: GpuBackend,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.backend = backend
        self._clock = clock
        self.clocks = ClockController(
            backend, {i.name: i.gpu_indices for i in config.instances}, wall=clock
        )
        self.window_s = config.window_s
        self.connected = asyncio.Event()
        self.sessions_started = 0
        self.acks_sent = 0
        self.windows_sent = 0
        self.errors_received: list[pb.Error] = []
        self._stopping = asyncio.Event()

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        """Run until stop(); GPUs are reset at start (foreign locks) and at exit."""
        await asyncio.to_thread(self.clocks.reset_all, "agent start: no lock is ours yet")
        lease_task = asyncio.create_task(self._enforce_leases(), name="agft-leases")
        try:
            async with httpx.AsyncClient() as http:
                await self._link_loop(http)
        finally:
            lease_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lease_task
            await asyncio.to_thread(self.clocks.reset_all, "agent stopping")

    def stop(self) -> None:
        self._stopping.set()

    async def _enforce_leases(self) -> None:
        while True:
            await asyncio.to_thread(self.clocks.expire_leases)
            await asyncio.sleep(self.config.lease_check_s)

    async def _link_loop(self, http: httpx.AsyncClient) -> None:
        backoff = Backoff(self.config.backoff_initial_s, self.config.backoff_max_s)
        while not self._stopping.is_set():
            try:
                welcomed = await self._session(http)
                if welcomed:
                    backoff.reset()
            except FatalLinkError:
                raise
            except grpc.aio.AioRpcError as err:
                if err.code() in FATAL_CODES:
                    raise FatalLinkError(f"server refused us: {err.details()}") from err
                log.warning("link to %s lost: %s %s", self.config.server, err.code(), err.details())
            except (TimeoutError, OSError) as err:
                log.warning("link to %s failed: %s", self.config.server, err)
            self.connected.clear()
            if self._stopping.is_set():
                break
            delay = backoff.next_delay()
            log.info("reconnecting in %.2f s", delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    # ---- one stream -----------------------------------------------------------------
    async def _session(self, http: httpx.AsyncClient) -> bool:
        outbox: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        seq = 0

        def send(**body: object) -> None:
            nonlocal seq
            seq += 1
            outbox.put_nowait(pb.AgentMessage(seq=seq, **body))  # type: ignore[arg-type]

        async def requests() -> AsyncIterator[pb.AgentMessage]:
            while True:
                msg = await outbox.get()
                if msg is None:
                    return
                yield msg

        async with grpc.aio.insecure_channel(self.config.server) as channel:
            stub = pb_grpc.AgentLinkStub(channel)
            send(hello=await asyncio.to_thread(self._hello))
            call = stub.Connect(requests())
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
                raise OSError("server did not answer Hello with Welcome")
            self.window_s = first.welcome.window_s or self.window_s
            self.sessions_started += 1
            self.connected.set()
            log.info("connected to %s as %s", self.config.server, self.config.node_id)
            windows = asyncio.create_task(self._window_loop(http, send), name="agft-windows")
            stopper = asyncio.create_task(self._stopping.wait())
            try:
                reader = asyncio.create_task(self._read_commands(call, send))
                done, _ = await asyncio.wait(
                    {reader, windows, stopper}, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    if task is not stopper:
                        task.result()  # re-raise what ended the session
            finally:
                outbox.put_nowait(None)
                for task in (windows, stopper, reader):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                        await task
                call.cancel()
        return True

    async def _read_commands(
        self, call: grpc.aio.StreamStreamCall, send: Callable[..., None]
    ) -> None:
        while True:
            msg = await call.read()
            if msg is grpc.aio.EOF:
                raise OSError("server closed the stream")
            kind = msg.WhichOneof("body")
            if kind == "set_clocks":
                ack = await asyncio.to_thread(self.clocks.set_clocks, msg.set_clocks)
            elif kind == "reset_clocks":
                ack = await asyncio.to_thread(self.clocks.reset_clocks, msg.reset_clocks)
            elif kind == "error":
                self.errors_received.append(msg.error)
                log.warning(
                    "server rejected message %d: %s: %s",
                    msg.error.seq,
                    msg.error.code,
                    msg.error.message,
                )
                continue
            else:
                log.info("ignoring server message %s", kind)
                continue
            send(ack=ack)
            self.acks_sent += 1

    async def _window_loop(self, http: httpx.AsyncClient, send: Callable[..., None]) -> None:
        scrapers = {
            i.name: ServingScraper(i.metrics_url, i.engine, http, self.config.scrape_timeout_s)
            for i in self.config.instances
        }
        sampler = GpuWindowSampler(
            self.backend, (g for i in self.config.instances for g in i.gpu_indices), self._clock
        )
        await asyncio.to_thread(sampler.prime)
        await asyncio.gather(*(s.next_window() for s in scrapers.values()))  # baselines
        next_tick = time.monotonic()
        while True:
            next_tick += self.window_s
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            start, end, gpu_windows = await asyncio.to_thread(sampler.sample)
            serving = await asyncio.gather(*(s.next_window() for s in scrapers.values()))
            telemetry = pb.Telemetry()
            for inst, serving_window in zip(self.config.instances, serving, strict=True):
                lease = self.clocks.leases.get(inst.name)
                telemetry.windows.append(
                    pb.InstanceWindow(
                        instance=inst.name,
                        window_start_s=start,
                        window_end_s=end,
                        gpus=[gpu_windows[g] for g in inst.gpu_indices],
                        serving=serving_window,
                        command_id="" if lease is None else lease.command_id,
                    )
                )
            send(telemetry=telemetry)
            self.windows_sent += len(telemetry.windows)

    # ---- Hello ----------------------------------------------------------------------
    def _hello(self) -> pb.Hello:
        b = self.backend
        used = sorted({g for i in self.config.instances for g in i.gpu_indices})
        gpus = []
        for index in used:
            ident = b.identity(index)
            mem_default = b.default_memory_clock_mhz(index)
            gpu = pb.Gpu(
                index=index,
                uuid=ident.uuid,
                name=ident.name,
                supported_sm_clocks_mhz=b.supported_sm_clocks_mhz(index, mem_default),
                supported_memory_clocks_mhz=b.supported_memory_clocks_mhz(index),
                default_sm_clock_mhz=b.default_sm_clock_mhz(index),
                default_memory_clock_mhz=mem_default,
                power_limit_mw=b.power_limit_mw(index),
            )
            try:
                gpu.current_sm_clock_mhz = b.sm_clock_mhz(index)
                gpu.current_memory_clock_mhz = b.memory_clock_mhz(index)
                lock = b.locked_sm_clocks_mhz(index)
                if lock is not None:
                    gpu.locked_min_sm_clock_mhz, gpu.locked_max_sm_clock_mhz = lock
            except GpuError as err:
                log.warning("GPU %d current clocks unknown: %s", index, err)
            gpus.append(gpu)
        return pb.Hello(
            node_id=self.config.node_id,
            agent_version=__version__,
            hostname=socket.gethostname(),
            gpus=gpus,
            instances=[
                pb.ServingInstance(
                    name=i.name,
                    engine=engine_to_wire(i.engine),
                    metrics_url=i.metrics_url,
                    model_name=i.model_name,
                    gpu_indices=i.gpu_indices,
                )
                for i in self.config.instances
            ],
        )

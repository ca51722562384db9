"""The node agent: measure every window, stream it, apply commands, keep leases honest.

One long-lived gRPC stream to the server. Reconnects with capped, jittered backoff
and sends Hello again. Leases are enforced locally whatever the link does: if the
server goes quiet, lowered clocks go back to default when their lease runs out.
Windows are measured whatever the link does too, and kept until the server says they
are stored (`resend.py`): a reconnect sends again what a dead server never stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable

import grpc
import httpx

from agft.commands import commands_of
from agft.engines import engine_to_wire
from agft.v1 import agent_pb2 as pb
from agft.v1 import agent_pb2_grpc as pb_grpc
from node_agent import __version__
from node_agent.backoff import Backoff
from node_agent.clocks import ClockController
from node_agent.config import AgentConfig, ConfigError
from node_agent.gpu.base import GpuBackend, GpuError
from node_agent.link_security import auth_metadata, open_channel
from node_agent.reflex import FastLoop
from node_agent.resend import ResendBuffer
from node_agent.serving.scraper import ServingScraper
from node_agent.window import GpuWindowSampler, next_window_tick

log = logging.getLogger(__name__)

# Errors after which retrying cannot help: say so and stop instead of hammering the server.
FATAL_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# A front-door reading slower than this is worth nothing to a loop polling every 20 ms.
FAST_READ_TIMEOUT_S = 0.25


class FatalLinkError(RuntimeError):
    pass


class SafetyLoopError(RuntimeError):
    """The lease-enforcing loop failed: lowered clocks could outlive their leases.

    Every managed GPU has been reset when this is raised. The agent must exit non-zero
    so its supervisor (systemd, Kubernetes) restarts it with a working safety loop."""


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
            backend,
            {i.name: i.gpu_indices for i in config.instances},
            wall=clock,
            max_lease_s=config.max_lease_s,
        )
        self.window_s = config.window_s
        self.connected = asyncio.Event()
        self.sessions_started = 0
        self.acks_sent = 0
        self.windows_sent = 0
        self.windows_measured = 0
        # This process's windows are numbered under a boot id of its own, so a server
        # can tell a window sent again from a new one, and a restarted agent from both.
        self.boot_id = secrets.randbits(63) or 1
        self.resend = ResendBuffer(max(1, math.ceil(config.resend_buffer_s / config.window_s)))
        self._send: Callable[..., None] | None = None  # the live stream's, if any
        self._new_window = asyncio.Event()
        self._acks_since_window: list[pb.CommandAck] = []
        self.control_status_sent = 0
        self.errors_received: list[pb.Error] = []
        self._stopping = asyncio.Event()
        self._backoff = Backoff(config.backoff_initial_s, config.backoff_max_s)
        # Replicas to try in turn: a session that fails moves on to the next address.
        self._servers = config.servers
        self._server_index = 0
        # Each GPU's monitor-only reason as this session's server last heard it.
        self._reported: dict[int, str] = {}
        self._inventories: dict[int, pb.Gpu] = {}
        # The fast loop, for the instances with a front door (none: no thread at all).
        doors = {i.name: i.front_door for i in config.instances if i.front_door is not None}
        timeout_s = min(config.scrape_timeout_s, FAST_READ_TIMEOUT_S)
        self.fast_loop = FastLoop.over_http(self.clocks, doors, timeout_s) if doors else None
        self._fast_stop = threading.Event()
        self._fast_thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        """Run until stop(); GPUs are reset at start (foreign locks) and at exit.

        Raises FatalLinkError when the server refuses us for good, and SafetyLoopError
        when lease enforcement fails (after resetting every managed GPU)."""
        await asyncio.to_thread(self.clocks.start)
        if self.fast_loop is not None:
            self._fast_stop.clear()
            self._fast_thread = threading.Thread(
                target=self.fast_loop.run, args=(self._fast_stop,), name="agft-fast-loop"
            )
            self._fast_thread.start()
        lease_task = asyncio.create_task(self._enforce_leases(), name="agft-leases")
        http = httpx.AsyncClient()
        measure_task = asyncio.create_task(self._measure_forever(http), name="agft-windows")
        link_task = asyncio.create_task(self._link_loop(http), name="agft-link")
        why = "agent stopping"
        try:
            await asyncio.wait({lease_task, link_task}, return_when=asyncio.FIRST_COMPLETED)
            if lease_task.done():
                # It never returns: it ended on an exception, so no lease is enforced now.
                err = lease_task.exception()
                why = f"lease enforcement failed: {type(err).__name__}: {err}"
                log.critical("%s; resetting every managed GPU and exiting", why, exc_info=err)
                raise SafetyLoopError(why) from err
            link_task.result()
        finally:
            for task in (link_task, measure_task, lease_task):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await http.aclose()
            self._fast_stop.set()
            if self._fast_thread is not None:
                await asyncio.to_thread(self._fast_thread.join, 5.0)
            await asyncio.to_thread(self.clocks.reset_all, why)

    def stop(self) -> None:
        self._stopping.set()

    async def _enforce_leases(self) -> None:
        while True:
            await asyncio.to_thread(self.clocks.expire_leases)
            thread = self._fast_thread
            if thread is not None and not thread.is_alive() and not self._fast_stop.is_set():
                # Its steps cannot raise out of it, so this is a bug; a boost it left in
                # force would carry into every later command: stop, like a failed lease loop.
                raise RuntimeError("the fast loop's thread ended")
            await asyncio.sleep(self.config.lease_check_s)

    @property
    def server(self) -> str:
        """The address this agent talks to now (or tries next)."""
        return self._servers[self._server_index % len(self._servers)]

    async def _link_loop(self, http: httpx.AsyncClient) -> None:
        # Only FatalLinkError or ConfigError (or cancellation) ends this loop: whatever
        # else one session raises is logged and retried, so the agent never stops quietly.
        while not self._stopping.is_set():
            try:
                await self._session(http)
            except (FatalLinkError, ConfigError):
                raise  # retrying cannot help: no token, unreadable TLS files, and the like
            except grpc.aio.AioRpcError as err:
                if err.code() in FATAL_CODES:
                    raise FatalLinkError(f"server refused us: {err.details()}") from err
                log.warning("link to %s lost: %s %s", self.server, err.code(), err.details())
            except (TimeoutError, OSError) as err:
                log.warning("link to %s failed: %s", self.server, err)
            except Exception:
                log.exception("session with %s failed unexpectedly", self.server)
            self.connected.clear()
            if self._stopping.is_set():
                break
            if len(self._servers) > 1:
                self._server_index += 1  # that replica is gone or refuses us: the next
                if self._server_index % len(self._servers):
                    # Straight on to another replica; once round them all, back off.
                    continue
            delay = self._backoff.next_delay()
            log.info("reconnecting in %.2f s", delay)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    # ---- one stream -----------------------------------------------------------------
    async def _session(self, http: httpx.AsyncClient) -> bool:
        outbox: asyncio.Queue[pb.AgentMessage | None] = asyncio.Queue()
        seq = 0
        welcomed = False

        def send(**body: object) -> None:
            nonlocal seq
            seq += 1
            outbox.put_nowait(pb.AgentMessage(seq=seq, **body))  # type: ignore[arg-type]
            self._new_window.set()  # wakes requests() as a new window does

        async def requests() -> AsyncIterator[pb.AgentMessage]:
            nonlocal seq
            sent_through = 0  # the newest window seq this stream has sent
            while True:
                self._new_window.clear()
                if not outbox.empty():
                    msg = outbox.get_nowait()
                    if msg is None:
                        return
                    yield msg
                    continue
                due = self.resend.next_to_send(sent_through, self.sessions_started)
                if welcomed and due is not None:
                    # Pulled one at a time as gRPC can send: a server that stops reading
                    # (its database behind) holds windows here, counted and bounded,
                    # instead of in an unbounded queue.
                    sent_through, telemetry = due
                    seq += 1
                    yield pb.AgentMessage(seq=seq, telemetry=telemetry)
                    self.windows_sent += len(telemetry.windows)
                    continue
                await self._new_window.wait()

        async with open_channel(self.config, self.server) as channel:
            stub = pb_grpc.AgentLinkStub(channel)
            send(hello=await asyncio.to_thread(self._hello))
            call = stub.Connect(requests(), metadata=auth_metadata(self.config))
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("body") != "welcome":
                raise OSError("server did not answer Hello with Welcome")
            self._welcomed(first.welcome)
            self.resend.stored(first.welcome.stored_through_seq)
            welcomed = True
            self._send = send
            self._new_window.set()
            self.connected.set()
            log.info(
                "connected to %s as %s (%d windows to send again)",
                self.server,
                self.config.node_id,
                len(self.resend),
            )
            stopper = asyncio.create_task(self._stopping.wait())
            try:
                reader = asyncio.create_task(self._read_commands(call, send))
                done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stopper:
                        task.result()  # re-raise what ended the session
            finally:
                self._send = None
                outbox.put_nowait(None)
                self._new_window.set()
                for task in (stopper, reader):
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
            if kind in ("set_clocks", "reset_clocks", "commands"):
                # Applied in order; one ack for a command alone, one Acks for several.
                acks = [await self._apply(command) for command in commands_of(msg)]
                self._report_control(send)  # a refusal may have taken a GPU out of control
                if kind == "commands":
                    send(acks=pb.Acks(acks=acks))
                else:
                    send(ack=acks[0])
            elif kind == "stored":
                if msg.stored.boot_id == self.boot_id:
                    self.resend.stored(msg.stored.through_seq)
                continue
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
            self.acks_sent += len(acks)
            # Again in the next window: kept with it until stored, an ack survives a
            # replica killed before it wrote it.
            self._acks_since_window.extend(acks)

    async def _apply(self, command: pb.SetClocks | pb.ResetClocks) -> pb.CommandAck:
        if isinstance(command, pb.SetClocks):
            return await asyncio.to_thread(self.clocks.set_clocks, command)
        return await asyncio.to_thread(self.clocks.reset_clocks, command)

    async def _measure_forever(self, http: httpx.AsyncClient) -> None:
        """Measure windows for the agent's whole life, connected or not.

        Never ends quietly: whatever one run of the loop raises is logged, and measuring
        starts again (with fresh baselines) a window later."""
        while True:
            try:
                await self._window_loop(http)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("measuring windows failed; starting again")
            await asyncio.sleep(self.window_s)

    async def _window_loop(self, http: httpx.AsyncClient) -> None:
        scrapers = {
            i.name: ServingScraper(
                i.metrics_url,
                i.engine,
                http,
                self.config.scrape_timeout_s,
                match_labels=i.match_labels,
            )
            for i in self.config.instances
        }
        sampler = GpuWindowSampler(
            self.backend,
            (g for i in self.config.instances for g in i.gpu_indices),
            self._clock,
            monotonic=time.monotonic,
        )
        await asyncio.to_thread(sampler.prime)
        await asyncio.gather(*(s.next_window() for s in scrapers.values()))  # baselines
        next_tick = time.monotonic()
        while True:
            next_tick = next_window_tick(next_tick, time.monotonic(), self.window_s)
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))
            start, end, gpu_windows = await asyncio.to_thread(sampler.sample)
            if sampler.unavailable:
                await asyncio.to_thread(self._lost, dict(sampler.unavailable))
                if self._send is not None:  # else the next Hello says it
                    self._report_control(self._send)
            serving = await asyncio.gather(*(s.next_window() for s in scrapers.values()))
            telemetry = pb.Telemetry()
            for inst, serving_window in zip(self.config.instances, serving, strict=True):
                lease = self.clocks.leases.get(inst.name)
                reflex = self.fast_loop.take_window(inst.name) if self.fast_loop else None
                telemetry.windows.append(
                    pb.InstanceWindow(
                        instance=inst.name,
                        window_start_s=start,
                        window_end_s=end,
                        gpus=[gpu_windows[g] for g in inst.gpu_indices],
                        serving=serving_window,
                        command_id="" if lease is None else lease.command_id,
                        reflex=reflex,
                    )
                )
            telemetry.acks.extend(self._acks_since_window)
            self._acks_since_window.clear()
            self.resend.add(telemetry, self.sessions_started)
            self.windows_measured += len(telemetry.windows)
            self._new_window.set()

    # ---- what the server sends that the agent bounds ----------------------------------
    def _welcomed(self, welcome: pb.Welcome) -> None:
        """Accept a Welcome; its values are bounded, since whatever answers as the server
        sends them: a zero or negative window would make the window loop spin."""
        c = self.config
        window_s = welcome.window_s
        if window_s == 0:  # unset: the configured window
            self.window_s = c.window_s
        elif math.isfinite(window_s) and c.min_window_s <= window_s <= c.max_window_s:
            self.window_s = window_s
        else:
            log.error(
                "server asked for window_s=%r, outside [%g, %g] s: keeping %g s",
                window_s,
                c.min_window_s,
                c.max_window_s,
                c.window_s,
            )
            self.window_s = c.window_s
        lease_s = welcome.lease_s  # informational: each SetClocks carries its own lease
        if lease_s != 0 and not (math.isfinite(lease_s) and 0 < lease_s <= c.max_lease_s):
            log.error(
                "server announced lease_s=%r, outside (0, %g] s: its clock commands will be "
                "refused",
                lease_s,
                c.max_lease_s,
            )
        # A healthy session ends the run of failures: the next drop retries quickly.
        self._backoff.reset()
        self.sessions_started += 1

    # ---- controllability ------------------------------------------------------------
    def _lost(self, unavailable: dict[int, str]) -> None:
        already = self.clocks.monitor_only()
        for index, error in unavailable.items():
            if index not in already:  # one reason per GPU, not a new one every window
                self.clocks.mark_monitor_only(index, f"GPU unavailable: {error}")

    def _report_control(self, send: Callable[..., None]) -> None:
        """Tell the server, once, about every GPU whose controllability changed."""
        now = self.clocks.monitor_only()
        changed = {
            index: now.get(index, "")
            for index in self._managed_gpus()
            if now.get(index, "") != self._reported.get(index, "")
        }
        if not changed:
            return
        send(
            control_status=pb.ControlStatus(
                gpus=[
                    pb.GpuControl(index=i, monitor_only_reason=r)
                    for i, r in sorted(changed.items())
                ]
            )
        )
        self._reported.update(changed)
        self.control_status_sent += 1

    def _managed_gpus(self) -> list[int]:
        return sorted({g for i in self.config.instances for g in i.gpu_indices})

    # ---- Hello ----------------------------------------------------------------------
    def _inventory(self, index: int) -> pb.Gpu:
        """What does not change while the driver is loaded, read once: a GPU lost later
        must not stop the agent from saying Hello again (it is then monitor-only)."""
        gpu = self._inventories.get(index)
        if gpu is None:
            b = self.backend
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
            self._inventories[index] = gpu
        return gpu

    def _hello(self) -> pb.Hello:
        b = self.backend
        monitor_only = self.clocks.monitor_only()
        self._reported = dict(monitor_only)
        gpus = []
        for index in self._managed_gpus():
            gpu = pb.Gpu()
            gpu.CopyFrom(self._inventory(index))
            gpu.monitor_only_reason = monitor_only.get(index, "")
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
            boot_id=self.boot_id,
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
                    labels=dict(i.labels),
                    front_door=i.front_door.to_wire() if i.front_door else None,
                )
                for i in self.config.instances
            ],
        )

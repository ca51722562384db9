"""A simulated GPU serving node: GPUs behind ``GpuBackend`` and vLLM instances with /metrics.

Realtime mode catches up on observation: each backend call and each /metrics render first
advances the simulation to the wall clock, under one node-wide lock, so no thread spins in the
background and every reading is consistent with every other.
"""

from __future__ import annotations

import json
import threading
from typing import Literal

from sim.backend import SimulatedGpuBackend
from sim.clock import Clock, RealtimeClock, VirtualClock
from sim.engine import Engine, EngineConfig, RequestRecord
from sim.frontdoor import FrontDoor, FrontDoorCounts, render_router_metrics
from sim.gpu import GpuGroup, SimGpu
from sim.http import MetricsServer
from sim.kvcache import KvCache, kv_capacity_blocks
from sim.physics import StepModel
from sim.profiles import gpu_profile, model_profile
from sim.workload import NoWorkload, Workload

__all__ = ["SimInstance", "SimulatedNode"]


class SimInstance:
    """One vLLM server on the node: an engine over a tensor-parallel group of GPUs."""

    def __init__(
        self,
        node: SimulatedNode,
        name: str,
        model_name: str,
        gpu_indices: list[int],
        engine: Engine,
        legacy_metric_names: bool,
    ) -> None:
        self._node = node
        self.name = name
        self.engine = "vllm"
        self.model_name = model_name
        self.gpu_indices = gpu_indices
        self.sim_engine = engine
        self.legacy_metric_names = legacy_metric_names
        self._metrics_available = True
        self._server: MetricsServer | None = None
        self.front_door = FrontDoor(engine)

    @property
    def metrics_url(self) -> str:
        """http://127.0.0.1:PORT/metrics; the server exists between node.start() and stop()."""
        if self._server is None:
            raise RuntimeError(f"{self.name}: no HTTP server; call node.start() first")
        return self._server.url

    @property
    def load_url(self) -> str:
        """GET /load, as vLLM's API server answers it with --enable-server-load-tracking."""
        return self._url_of("/load")

    @property
    def router_metrics_url(self) -> str:
        """A router's gauges (Dynamo frontend names) for this instance alone."""
        return self._url_of("/router/metrics")

    def _url_of(self, path: str) -> str:
        if self._server is None:
            raise RuntimeError(f"{self.name}: no HTTP server; call node.start() first")
        return self._server.url_of(path)

    def api_server_counts(self) -> FrontDoorCounts:
        """The API server's counts as of the node's clock now."""
        with self._node.lock:
            return self.front_door.api_server(self._node.sync())

    def router_counts(self) -> FrontDoorCounts:
        with self._node.lock:
            return self.front_door.router(self._node.sync())

    def _render_load(self) -> tuple[bytes, str]:
        body = {"server_load": self.api_server_counts().in_flight}
        return json.dumps(body).encode(), "application/json"

    def _render_router(self) -> tuple[bytes, str]:
        text = render_router_metrics(self.model_name, self.router_counts())
        return text.encode(), "text/plain; version=0.0.4; charset=utf-8"

    @property
    def port(self) -> int:
        return int(self.metrics_url.rsplit(":", 1)[1].split("/", 1)[0])

    def render_metrics(self) -> str:
        """The /metrics body as of the node's clock now."""
        with self._node.lock:
            self._node.sync()
            return self.sim_engine.metrics.render(
                self.model_name, engine="0", legacy=self.legacy_metric_names
            )

    def set_metrics_available(self, available: bool) -> None:
        """Fault injection: while False the HTTP endpoint answers 503."""
        self._metrics_available = available

    @property
    def metrics_available(self) -> bool:
        return self._metrics_available

    def completed_requests(self) -> list[RequestRecord]:
        """Finished requests (the most recent ``EngineConfig.completed_history``)."""
        with self._node.lock:
            self._node.sync()
            return list(self.sim_engine.completed)

    def _start_server(self) -> None:
        if self._server is None:
            self._server = MetricsServer(
                self.render_metrics,
                lambda: self._metrics_available,
                routes={"/load": self._render_load, "/router/metrics": self._render_router},
            )
            self._server.start()

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None


class SimulatedNode:
    """Build with ``SimulatedNode.create``."""

    def __init__(
        self,
        clock: Clock,
        gpus: list[SimGpu],
        node_name: str,
    ) -> None:
        self.clock = clock
        self.clock_start = clock.now()
        self.node_name = node_name
        self.lock = threading.RLock()
        self._gpus = gpus
        self.instances: list[SimInstance] = []
        self.backend = SimulatedGpuBackend(gpus, self.lock, self.sync)
        self._started = False

    @classmethod
    def create(
        cls,
        gpu: str = "h100-sxm",
        model: str = "llama-3.1-8b",
        instances: int = 1,
        workload: Workload | None = None,
        clock: Literal["realtime", "virtual"] = "realtime",
        seed: int = 0,
        node_name: str = "sim-node-0",
        legacy_metric_names: bool = False,
        engine_config: EngineConfig | None = None,
        start_time_s: float | None = None,
    ) -> SimulatedNode:
        """A node of ``instances`` x TP GPUs, each instance fed by its own workload stream.

        start_time_s: virtual clock start (default a fixed epoch, for reproducibility).
        """
        if instances < 1:
            raise ValueError("instances must be >= 1")
        gp = gpu_profile(gpu)
        mp = model_profile(model)
        cfg = engine_config or EngineConfig()
        clk: Clock
        if clock == "realtime":
            clk = RealtimeClock()
        elif clock == "virtual":
            clk = VirtualClock() if start_time_s is None else VirtualClock(start_time_s)
        else:
            raise ValueError(f"clock must be 'realtime' or 'virtual', got {clock!r}")
        t0 = clk.now()
        physics = StepModel(gp, mp)
        tp = mp.tensor_parallel
        gpus = [
            SimGpu(
                i, gp, physics, t0, node_name, energy_offset_mj=_energy_offset(seed, node_name, i)
            )
            for i in range(instances * tp)
        ]
        node = cls(clk, gpus, node_name)
        streams = (workload or NoWorkload()).streams(instances, seed)
        blocks = cfg.num_gpu_blocks or kv_capacity_blocks(
            gp, mp, cfg.gpu_memory_utilization, cfg.block_size
        )
        for k in range(instances):
            idx = list(range(k * tp, (k + 1) * tp))
            engine = Engine(
                physics=physics,
                group=GpuGroup([gpus[i] for i in idx], physics),
                stream=streams[k],
                t0=t0,
                kv=KvCache(blocks, cfg.block_size),
                max_num_seqs=cfg.max_num_seqs or gp.vllm_max_num_seqs,
                max_num_batched_tokens=cfg.max_num_batched_tokens or gp.vllm_max_num_batched_tokens,
                prefix_cache_hit_fraction=cfg.prefix_cache_hit_fraction,
                completed_history=cfg.completed_history,
            )
            node.instances.append(
                SimInstance(node, f"vllm-{k}", mp.hf_id, idx, engine, legacy_metric_names)
            )
        return node

    # ---- time -------------------------------------------------------------------------------
    @property
    def realtime(self) -> bool:
        return self.clock.realtime

    def now(self) -> float:
        return self.clock.now()

    def sync(self) -> float:
        """Advance every instance to the clock's now; returns it. Call under ``lock``."""
        with self.lock:
            t = self.clock.now()
            for inst in self.instances:
                inst.sim_engine.advance_to(t)
            for g in self._gpus:
                g.record_idle(t)  # GPUs of no instance, and the tail of the timeline
            return t

    def advance_to(self, t: float) -> None:
        """Virtual clock only: simulate up to time t (idle gaps are skipped, not slept)."""
        if not isinstance(self.clock, VirtualClock):
            raise RuntimeError("advance_to needs clock='virtual'; realtime follows the wall clock")
        with self.lock:
            self.clock.set(t)
            self.sync()

    def advance(self, dt: float) -> None:
        """Virtual clock only: simulate dt more seconds."""
        self.advance_to(self.now() + dt)

    # ---- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Start one /metrics HTTP server per instance (realtime mode)."""
        with self.lock:
            if self._started:
                return
            self._started = True
            for inst in self.instances:
                inst._start_server()

    def stop(self) -> None:
        """Stop the HTTP servers; idempotent."""
        with self.lock:
            servers = list(self.instances)
            self._started = False
        for inst in servers:
            inst._stop_server()

    def __enter__(self) -> SimulatedNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- conveniences -------------------------------------------------------------------------
    def instance(self, name: str) -> SimInstance:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(name)

    def gpu(self, index: int) -> SimGpu:
        """The simulated GPU behind backend index ``index`` (timeline, physics, clocks)."""
        return self._gpus[index]


def _energy_offset(seed: int, node_name: str, index: int) -> int:
    """A large, deterministic starting value: a real counter counts since the driver loaded."""
    h = 0
    for ch in f"{seed}/{node_name}/{index}":
        h = (h * 131 + ord(ch)) % 1_000_003
    return 10_000_000_000 + h * 1000

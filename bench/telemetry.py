"""One instance's windows, measured the way the node agent measures them.

GPU side: the agent's GpuWindowSampler on the simulated backend, clocked by the node's
virtual time. Serving side: the instance's /metrics text, parsed, snapshotted and
differenced by the agent's own functions (what ServingScraper does, minus HTTP). The
InstanceWindow is assembled as node_agent/agent.py assembles it, including the command
id of the lease in force.

Speed: before parsing, the text is cut to the metric families the agent's snapshot reads
(vLLM also exposes a dozen per-request histograms nobody here uses). The agent's parser
spends most of a benchmark's time on label sets, so this halves a run; the resulting
ServingWindow is the same, message for message (tests/bench checks it against the agent's
own HTTP scraper).
"""

from __future__ import annotations

from agft.v1 import agent_pb2 as pb
from node_agent.clocks import ClockController
from node_agent.serving import exposition
from node_agent.serving.names import BY_ENGINE, EngineNames
from node_agent.serving.snapshot import HISTOGRAMS, ServingSnapshot, snapshot, window
from node_agent.window import GpuWindowSampler
from sim.node import SimInstance, SimulatedNode


def read_families(names: EngineNames) -> frozenset[str]:
    """Every sample name the agent's snapshot looks up, histogram series included."""
    out: set[str] = set()
    for field in names.__dataclass_fields__:
        for name in getattr(names, field):
            out.add(name)
            if field in HISTOGRAMS:
                out.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return frozenset(out)


def cut_to(text: str, families: frozenset[str]) -> str:
    """The exposition lines whose sample name is in families (comments dropped)."""
    keep = []
    for line in text.splitlines():
        if line and line[0] != "#" and line.split("{", 1)[0].split(" ", 1)[0] in families:
            keep.append(line)
    return "\n".join(keep)


class InstanceTelemetry:
    def __init__(self, node: SimulatedNode, instance: SimInstance, clocks: ClockController) -> None:
        self._instance = instance
        self._clocks = clocks
        self._names = BY_ENGINE[instance.engine]
        self._families = read_families(self._names)
        self._gpus = tuple(instance.gpu_indices)
        self._sampler = GpuWindowSampler(node.backend, self._gpus, node.now)
        self._previous: ServingSnapshot | None = None

    def prime(self) -> None:
        """Energy marks and the /metrics baseline, as the agent takes them before its loop."""
        self._sampler.prime()
        self._previous = self._scrape()

    def _scrape(self) -> ServingSnapshot:
        text = cut_to(self._instance.render_metrics(), self._families)
        return snapshot(exposition.parse(text), self._names)

    def close_window(self) -> pb.InstanceWindow:
        """Close the window ending now and return it as the agent would stream it."""
        start, end, gpu_windows = self._sampler.sample()
        current = self._scrape()
        serving = window(self._previous, current)
        self._previous = current
        lease = self._clocks.leases.get(self._instance.name)
        return pb.InstanceWindow(
            instance=self._instance.name,
            window_start_s=start,
            window_end_s=end,
            gpus=[gpu_windows[g] for g in self._gpus],
            serving=serving,
            command_id="" if lease is None else lease.command_id,
        )

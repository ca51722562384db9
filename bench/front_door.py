"""The agent's fast loop in virtual time: its own code (node_agent/reflex.py) reading the
simulated front door, on the same arrivals as every other run.

A policy name with a suffix runs that policy with a front door: `agft+load` reads the API
server's GET /load (in flight, vLLM's --enable-server-load-tracking), `agft+router` a router's
queued gauge (awaiting the first token, Dynamo's dynamo_frontend_queued_requests) one hop
upstream. Without a suffix the loop does not exist: today's behaviour, exactly.

What is modelled, not assumed away: the poll period (a reading every poll_s), the reply's
way back (the clock moves reply_s after the reading was taken), the router's hop each way
(sim/frontdoor.py) and the GPU's own clock-switch delay (sim/gpu.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from agft.v1 import agent_pb2 as pb
from node_agent.clocks import ClockController
from node_agent.reflex import FastLoop
from node_agent.serving.front_door import DEFAULT_POLL_S, IN_FLIGHT, QUEUED
from sim.node import SimInstance, SimulatedNode

SOURCES = {"load": IN_FLIGHT, "router": QUEUED}
# A GET on loopback or the local network, there and back.
DEFAULT_REPLY_S = 0.001


@dataclass(frozen=True, slots=True)
class FrontDoorSetup:
    source: str  # a key of SOURCES
    poll_s: float = DEFAULT_POLL_S
    reply_s: float = DEFAULT_REPLY_S

    @property
    def counts(self) -> int:
        return SOURCES[self.source]


def split_name(name: str) -> tuple[str, FrontDoorSetup | None]:
    """`agft+load` -> ("agft", load); `agft` -> ("agft", None). ValueError on an unknown
    source."""
    base, sep, source = name.rpartition("+")
    if not sep:
        return name, None
    if source not in SOURCES:
        raise ValueError(f"{name}: unknown front door {source!r}; known: {', '.join(SOURCES)}")
    return base, FrontDoorSetup(source)


class SimFrontDoorReader:
    """The gauge as the agent would read it over HTTP, minus HTTP: the simulated instance's
    counts at the node's time now."""

    def __init__(self, instance: SimInstance, source: str) -> None:
        self._instance = instance
        self._source = source

    def read(self) -> int | None:
        if not self._instance.metrics_available:
            return None  # the endpoint answers 503 with /metrics (fault injection)
        if self._source == "load":
            return self._instance.api_server_counts().in_flight
        return self._instance.router_counts().queued


class VirtualFastLoop:
    """Steps the agent's FastLoop through virtual time between window boundaries."""

    def __init__(
        self,
        node: SimulatedNode,
        instance: SimInstance,
        clocks: ClockController,
        setup: FrontDoorSetup,
    ) -> None:
        self._node = node
        self._clocks = clocks
        self._setup = setup
        self._instance = instance.name
        reader = SimFrontDoorReader(instance, setup.source)
        self.loop = FastLoop(
            clocks, {instance.name: (reader, setup.counts, setup.poll_s)}, monotonic=node.now
        )
        self._tick = node.now()

    def run_until(self, t: float) -> None:
        """Every poll before t: advance to it, read, let the reply come back, act."""
        node, setup = self._node, self._setup
        while self._tick + setup.poll_s < t:
            self._tick += setup.poll_s
            node.advance_to(self._tick)
            self._clocks.expire_leases()
            readings = self.loop.read_due()
            node.advance_to(min(self._tick + setup.reply_s, t))
            self.loop.act(readings)

    def take_window(self) -> pb.ReflexWindow:
        window = self.loop.take_window(self._instance)
        assert window is not None  # the loop has this instance's door by construction
        return window

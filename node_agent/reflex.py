"""The agent's fast loop (the reflex): raise the clock the moment prompts arrive.

vLLM shows a burst in /metrics only after the step that took it in, and the server decides
once a window. A front door sees arrivals at once: the API server's GET /load, or a
router's gauge. Every poll the loop reads each instance's front door and, inside a lease
whose command allows it, lifts the lock's ceiling to the command's boost clock while
prompts wait for their first token, then lowers it back to the command's clock.

It never goes below what the command set and never acts without a lease (ClockController
.boost), so a lease running out still means default clocks. An unreadable front door is
"unknown": no boost from it, the command's clock holds, as if there were no front door.
The server stays the learner: the windows it gets carry the boost time, and their energy
and latency show what the boost cost and saved.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from agft.v1 import agent_pb2 as pb
from node_agent.clocks import ClockController
from node_agent.serving.front_door import (
    IN_FLIGHT,
    QUEUED,
    FrontDoorReader,
    FrontDoorSpec,
    reader_for,
)

log = logging.getLogger(__name__)


class ReflexRule:
    """From one reading at a time: are prompts waiting for their first token?

    A queued count says so directly. An in-flight count cannot tell a first token, so a
    rise (an arrival) holds the boost for hold_s, the server's estimate of how long a
    prompt waits for its first token."""

    def __init__(self, counts: int) -> None:
        if counts not in (IN_FLIGHT, QUEUED):
            raise ValueError(f"unknown front-door count {counts!r}")
        self.counts = counts
        self._last: int | None = None
        self._until = -math.inf

    def wants_boost(self, now: float, reading: int | None, hold_s: float) -> bool:
        if reading is None:
            # Unknown is not idle, nor busy: the command's clock holds, and the next good
            # reading starts afresh (a rise across the gap is not an arrival we saw).
            self._last = None
            self._until = -math.inf
            return False
        if self.counts == QUEUED:
            return reading > 0
        if self._last is not None and reading > self._last:
            self._until = now + hold_s
        self._last = reading
        return now < self._until


@dataclass(slots=True)
class _Door:
    reader: FrontDoorReader
    rule: ReflexRule
    poll_s: float
    due: float = -math.inf
    polls: int = 0
    polls_failed: int = 0
    cpu_ns: int = 0


@dataclass(frozen=True, slots=True)
class Reading:
    instance: str
    at: float  # monotonic
    value: int | None
    cpu_ns: int


class FastLoop:
    """Every instance's reflex on one node. `step` is the whole logic; `run` calls it on a
    thread in real time, and the benchmark calls it in virtual time."""

    def __init__(
        self,
        clocks: ClockController,
        doors: Mapping[str, tuple[FrontDoorReader, int, float]],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """doors: instance -> (reader, counts, poll_s)."""
        self._clocks = clocks
        self._monotonic = monotonic
        self._doors = {
            name: _Door(reader, ReflexRule(counts), poll_s)
            for name, (reader, counts, poll_s) in doors.items()
        }
        self._mutex = threading.Lock()

    @classmethod
    def over_http(
        cls, clocks: ClockController, specs: Mapping[str, FrontDoorSpec], timeout_s: float
    ) -> FastLoop:
        """The loop on each instance's configured front door, read over HTTP."""
        return cls(
            clocks,
            {name: (reader_for(s, timeout_s), s.counts, s.poll_s) for name, s in specs.items()},
        )

    @property
    def poll_s(self) -> float:
        return min((d.poll_s for d in self._doors.values()), default=math.inf)

    def step(self) -> None:
        """Read every front door that is due and move its instance's ceiling."""
        self.act(self.read_due())

    def read_due(self) -> list[Reading]:
        """The readings of every front door due now. (The benchmark lets virtual time pass
        between reading and acting: the reply's way back.)"""
        readings = []
        for name, door in self._doors.items():
            now = self._monotonic()
            if now < door.due:
                continue
            # Half a period: the loop's own tick sets the pace; this only keeps a door
            # with a longer period than the loop's from being read every tick.
            door.due = now + door.poll_s / 2
            cpu0 = time.thread_time_ns()
            value = door.reader.read()
            readings.append(Reading(name, now, value, time.thread_time_ns() - cpu0))
        return readings

    def act(self, readings: list[Reading]) -> None:
        for r in readings:
            door = self._doors[r.instance]
            cpu0 = time.thread_time_ns()
            lease = self._clocks.leases.get(r.instance)
            hold_s = lease.hold_s if lease is not None else 0.0
            want = door.rule.wants_boost(r.at, r.value, hold_s)
            self._clocks.boost(r.instance, want)
            with self._mutex:
                door.polls += 1
                door.polls_failed += r.value is None
                door.cpu_ns += r.cpu_ns + time.thread_time_ns() - cpu0

    def take_window(self, instance: str) -> pb.ReflexWindow | None:
        """The instance's fast loop since the last call, for its InstanceWindow."""
        door = self._doors.get(instance)
        if door is None:
            return None
        boosted_s, boosts = self._clocks.take_boost_window(instance)
        with self._mutex:
            polls, failed, cpu_ns = door.polls, door.polls_failed, door.cpu_ns
            door.polls = door.polls_failed = door.cpu_ns = 0
        lease = self._clocks.leases.get(instance)
        return pb.ReflexWindow(
            base_sm_clock_mhz=lease.max_mhz if lease is not None else 0,
            boosted_s=boosted_s,
            boosts=boosts,
            polls=polls,
            polls_failed=failed,
            cpu_s=cpu_ns / 1e9,
        )

    def run(self, stop: threading.Event) -> None:
        """The real-time loop, until stop is set. It must not die quietly: a failed step is
        logged, its boosts are dropped (the commands' clocks hold) and the loop goes on."""
        poll_s = self.poll_s
        next_tick = time.monotonic()
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("fast loop step failed; holding the commands' clocks")
                for name in self._doors:
                    try:
                        self._clocks.boost(name, False)
                    except Exception:
                        log.exception("fast loop: cannot lower %s to its command's clock", name)
            next_tick += poll_s
            delay = next_tick - time.monotonic()
            if delay < 0:  # fell behind (a slow front door): no burst of catch-up polls
                next_tick, delay = time.monotonic(), 0.0
            stop.wait(delay)

"""Front doors: where prompts show before the engine schedules them, and how to read one.

vLLM's API server with --enable-server-load-tracking answers GET /load with
{"server_load": N}, the requests inside its handlers (from arrival until the response is
done). A router's Prometheus /metrics carries the same per engine or model: Dynamo's
frontend exports dynamo_frontend_inflight_requests and dynamo_frontend_queued_requests (the
latter until the first token). Each reader keeps one connection alive, since it is read
every few tens of ms, and answers None for anything it cannot read: unknown.
"""

from __future__ import annotations

import http.client
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlsplit

from agft.v1 import agent_pb2 as pb
from node_agent.serving import exposition

IN_FLIGHT = pb.FRONT_DOOR_COUNT_IN_FLIGHT
QUEUED = pb.FRONT_DOOR_COUNT_QUEUED
COUNT_NAMES = {"in_flight": IN_FLIGHT, "queued": QUEUED}
DEFAULT_POLL_S = 0.02


class FrontDoorReader(Protocol):
    def read(self) -> int | None:
        """The gauge now; None when it could not be read (unknown)."""


@dataclass(frozen=True, slots=True)
class FrontDoorSpec:
    """One instance's front door as configured (and reported in Hello)."""

    counts: int  # IN_FLIGHT or QUEUED
    url: str
    metric: str = ""  # a router gauge's name; empty: GET /load
    match_labels: Mapping[str, str] = field(default_factory=dict)
    poll_s: float = DEFAULT_POLL_S

    def to_wire(self) -> pb.FrontDoor:
        return pb.FrontDoor(
            counts=pb.FrontDoorCount.ValueType(self.counts),
            url=self.url,
            metric=self.metric,
            poll_s=self.poll_s,
        )


class LoadEndpoint:
    """GET /load of vLLM's API server ({"server_load": N}) over one kept-alive connection."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = parts.path or "/load"
        if parts.query:
            self._path += "?" + parts.query
        self._timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None

    def _get(self) -> bytes | None:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=self._timeout_s)
        try:
            self._conn.request("GET", self._path)
            response = self._conn.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException):
            self._conn.close()
            self._conn = None
            return None
        return body if response.status == 200 else None

    def read(self) -> int | None:
        body = self._get()
        if body is None:
            return None
        try:
            value = json.loads(body)["server_load"]
        except (ValueError, KeyError, TypeError):
            return None
        return _count(value)


class RouterGauge(LoadEndpoint):
    """One gauge on a router's Prometheus /metrics, summed over the samples whose labels
    include match_labels (one router serves many models and engines)."""

    def __init__(
        self, url: str, metric: str, match_labels: Mapping[str, str], timeout_s: float
    ) -> None:
        super().__init__(url, timeout_s)
        self._metric = metric
        self._match = tuple(match_labels.items())

    def read(self) -> int | None:
        body = self._get()
        if body is None:
            return None
        try:
            text = body.decode("utf-8")
            # Only the gauge's own lines are parsed: a router's /metrics is mostly histograms.
            lines = [ln for ln in text.splitlines() if ln.startswith(self._metric)]
            samples = exposition.parse("\n".join(lines))
        except (UnicodeDecodeError, exposition.ExpositionError):
            return None
        values = [
            s.value
            for s in samples
            if s.name == self._metric and all(s.label(k) == v for k, v in self._match)
        ]
        return _count(sum(values)) if values else None


def _count(value: object) -> int | None:
    """A gauge reading as a count of requests; anything else is unknown."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return int(value)


def reader_for(spec: FrontDoorSpec, timeout_s: float) -> FrontDoorReader:
    if spec.metric:
        return RouterGauge(spec.url, spec.metric, spec.match_labels, timeout_s)
    return LoadEndpoint(spec.url, timeout_s)

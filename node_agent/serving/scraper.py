"""Scrape a serving engine's /metrics over HTTP and turn scrapes into windows."""

from __future__ import annotations

import httpx

from agft.v1 import agent_pb2 as pb
from node_agent.serving import exposition
from node_agent.serving.names import BY_ENGINE, LABELS_BY_ENGINE
from node_agent.serving.snapshot import ServingSnapshot, SnapshotError, snapshot, window


class ServingScraper:
    """One instance's /metrics: each call to next_window() covers the time since the last.

    match_labels picks this instance's series where one endpoint serves several
    (InstanceConfig.match_labels, e.g. (("engine", "1"),) for a data-parallel rank).
    """

    def __init__(
        self,
        url: str,
        engine: str,
        client: httpx.AsyncClient,
        timeout_s: float = 0.5,
        *,
        match_labels: tuple[tuple[str, str], ...] = (),
    ):
        if engine not in BY_ENGINE:
            raise ValueError(f"unknown serving engine {engine!r}; known: {sorted(BY_ENGINE)}")
        self.url = url
        self._names = BY_ENGINE[engine]
        self._labels = LABELS_BY_ENGINE[engine]
        self._match = tuple(match_labels)
        self._client = client
        self._timeout_s = timeout_s
        self._previous: ServingSnapshot | None = None

    async def next_window(self) -> pb.ServingWindow:
        try:
            response = await self._client.get(self.url, timeout=self._timeout_s)
            response.raise_for_status()
            samples = exposition.parse(response.text)
            current = snapshot(samples, self._names, match_labels=self._match, labels=self._labels)
        except (httpx.HTTPError, exposition.ExpositionError, SnapshotError) as err:
            # Unknown, never idle: and the next good scrape starts a fresh baseline, so a
            # gap never turns into one huge delta attributed to a single window.
            self._previous = None
            return pb.ServingWindow(available=False, error=f"{type(err).__name__}: {err}"[:500])
        out = window(self._previous, current)
        self._previous = current
        return out

    def reset_baseline(self) -> None:
        self._previous = None

"""What the API server and a router in front of a simulated engine count, before /metrics can.

vLLM publishes its scheduler gauges when a step ends and counts prompt tokens when a prefill
finishes, so a burst shows in /metrics only after the step that took it in. Two real sources
see it earlier, and both are modelled here with their timing:

- vLLM's OpenAI API server started with ``--enable-server-load-tracking`` answers
  ``GET /load`` with ``{"server_load": N}``: N rises when a request enters its handler and
  falls when its response is done (``load_aware_call`` in vllm/entrypoints/utils.py). A
  request counts from its arrival, before the engine's next schedule, until its last token.
- A router in front of the engines, such as NVIDIA Dynamo's frontend, exports
  ``dynamo_frontend_inflight_requests`` and ``dynamo_frontend_queued_requests`` (in flight
  and awaiting their first token). The router sits ``hop_s`` upstream: it counts a request
  ``hop_s`` before the API server holds it, and hears of its first token and of its end
  ``hop_s`` after the engine produced them.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.engine import Engine

__all__ = ["DEFAULT_ROUTER_HOP_S", "FrontDoor", "FrontDoorCounts", "render_router_metrics"]

# A router on the same host or rack as the engine: a millisecond each way.
DEFAULT_ROUTER_HOP_S = 0.001


@dataclass(frozen=True, slots=True)
class FrontDoorCounts:
    in_flight: int  # arrived, response not done
    queued: int  # arrived, first token not out


class FrontDoor:
    """Counts as of time t; the caller has advanced the engine to t (the node's lock held)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def api_server(self, t: float) -> FrontDoorCounts:
        """What the engine's own API server holds at t: GET /load's server_load."""
        e = self._engine
        arrived = e.arrived_through(t)
        return FrontDoorCounts(arrived - e.done_through(t), arrived - e.first_tokens_through(t))

    def router(self, t: float, hop_s: float = DEFAULT_ROUTER_HOP_S) -> FrontDoorCounts:
        """What a router hop_s upstream holds at t: requests it forwarded that reach the
        engine by t + hop_s, less those whose first token (or end) it heard of by t."""
        e = self._engine
        arrived = e.arrived_through(t + hop_s)
        return FrontDoorCounts(
            arrived - e.done_through(t - hop_s), arrived - e.first_tokens_through(t - hop_s)
        )


def render_router_metrics(model: str, counts: FrontDoorCounts) -> str:
    """A router's gauges in Prometheus text, as Dynamo's frontend names them."""
    label = model.replace("\\", "\\\\").replace('"', '\\"')
    return (
        "# HELP dynamo_frontend_inflight_requests Requests in flight at the frontend\n"
        "# TYPE dynamo_frontend_inflight_requests gauge\n"
        f'dynamo_frontend_inflight_requests{{model="{label}"}} {counts.in_flight}\n'
        "# HELP dynamo_frontend_queued_requests Requests awaiting their first token\n"
        "# TYPE dynamo_frontend_queued_requests gauge\n"
        f'dynamo_frontend_queued_requests{{model="{label}"}} {counts.queued}\n'
    )

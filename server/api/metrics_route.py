"""GET /metrics: the fleet in Prometheus's text format, read from live state at scrape time.

Nothing is counted twice: the collector reads the numbers the fleet keeps anyway
(server/fleet/stats.py), so a scrape costs one pass over the live instances.
"""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from server.api.auth import require_viewer
from server.fleet.service import FleetService
from server.fleet.stats import DECIDE_BUCKETS_S, LATENCY_BUCKETS_S
from server.store.writer import BatchWriter

router = APIRouter(
    tags=["metrics"],
    dependencies=[Depends(require_viewer)],
    responses={401: {"description": "no or unknown token"}},
)


class FleetCollector(Collector):
    def __init__(self, fleet: FleetService, writer: BatchWriter) -> None:
        self._fleet = fleet
        self._writer = writer

    def collect(self) -> Iterator[Metric]:
        fleet = self._fleet
        gpu = ["node", "instance", "gpu"]
        inst = ["node", "instance"]
        energy = CounterMetricFamily(
            "agft_gpu_energy_joules", "GPU energy measured (NVML total-energy counter)", labels=gpu
        )
        power = GaugeMetricFamily(
            "agft_gpu_power_watts", "GPU mean power over the last window", labels=gpu
        )
        clock = GaugeMetricFamily(
            "agft_instance_sm_clock_mhz", "SM clock of the instance's GPUs (slowest)", labels=inst
        )
        saved = CounterMetricFamily(
            "agft_energy_saved_joules",
            "Estimated GPU energy saved against default clocks (docs/ENERGY.md); a window "
            "that cost more than default clocks is paid back before this rises again",
            labels=inst,
        )
        default = CounterMetricFamily(
            "agft_energy_default_joules",
            "GPU energy default clocks would have used: measured at default clocks, "
            "estimated otherwise (windows without an estimate are left out)",
            labels=inst,
        )
        attainment = GaugeMetricFamily(
            "agft_slo_attainment_ratio",
            "Share of first tokens (ttft) or token gaps (tpot) within the objective in force, "
            "over the last 300 windows",
            labels=[*inst, "objective"],
        )
        decisions = CounterMetricFamily(
            "agft_decisions", "Clock decisions taken", labels=[*inst, "mode"]
        )
        for session, runtime in list(fleet.live.values()):
            totals = fleet.totals.get(runtime.instance_id)
            if totals is None:
                continue
            node, name = session.node_id, runtime.name
            for index, joules in sorted(totals.gpu_energy_j.items()):
                energy.add_metric([node, name, str(index)], joules)
            for index, watts in sorted(totals.gpu_power_w.items()):
                if watts is not None:
                    power.add_metric([node, name, str(index)], watts)
            if runtime.last_clock_mhz is not None:
                clock.add_metric([node, name], runtime.last_clock_mhz)
            saved.add_metric([node, name], totals.energy_saved_j)
            default.add_metric([node, name], totals.default_energy_j)
            for objective, ratio in totals.attainment().items():
                if ratio is not None:
                    attainment.add_metric([node, name, objective], ratio)
            decisions.add_metric([node, name, runtime.mode], totals.decisions)
        yield from (energy, power, clock, saved, default, attainment, decisions)

        times = fleet.decide_times
        yield HistogramMetricFamily(
            "agft_decide_seconds",
            "Time to decide one window (the controller's work alone)",
            buckets=_cumulative(DECIDE_BUCKETS_S, times.counts),
            sum_value=times.total_s,
        )
        latency = fleet.command_latency
        yield HistogramMetricFamily(
            "agft_command_latency_seconds",
            "From a telemetry message read off its stream to each of its commands handed to "
            "gRPC (event-loop queueing included)",
            buckets=_cumulative(LATENCY_BUCKETS_S, latency.counts),
            sum_value=latency.total_s,
        )
        yield GaugeMetricFamily(
            "agft_command_latency_max_seconds",
            "The longest telemetry-to-command latency since the server started",
            value=latency.max_s,
        )
        yield CounterMetricFamily(
            "agft_persisted_rows", "Rows the writer stored", value=self._writer.rows_written
        )
        yield CounterMetricFamily(
            "agft_persist_set_aside_rows",
            "Rows the database refused for good (persist_failures)",
            value=self._writer.rows_set_aside,
        )
        yield GaugeMetricFamily(
            "agft_persist_queued_rows",
            "Rows waiting for the writer",
            value=self._writer.status().queued,
        )
        yield GaugeMetricFamily(
            "agft_agents_connected", "Node agents with a live stream", value=len(fleet.sessions)
        )


def registry_for(fleet: FleetService, writer: BatchWriter) -> CollectorRegistry:
    # One registry per app (not the process-global one): tests run several servers.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(fleet, writer))
    return registry


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    # Text format 0.0.4: what every Prometheus 2.x (Debian's too) and Grafana agent reads.
    body = generate_latest(request.app.state.metrics)
    return Response(body, headers={"content-type": CONTENT_TYPE_PLAIN_0_0_4})


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    buckets, running = [], 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(running)))
    return buckets

"""GET /metrics: Prometheus's text format, with the fleet's numbers labelled by node,
instance and GPU, passing `promtool check metrics`, and closed without a token."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.running import running_server
from tests.helpers.simnode import eventually, running_agent

REQUIRED = {
    "agft_gpu_energy_joules": "counter",
    "agft_gpu_power_watts": "gauge",
    "agft_instance_sm_clock_mhz": "gauge",
    "agft_energy_saved_joules": "counter",
    "agft_slo_attainment_ratio": "gauge",
    "agft_decisions": "counter",
    "agft_decide_seconds": "histogram",
    "agft_persisted_rows": "counter",
    "agft_agents_connected": "gauge",
}

OTHERS = {
    "agft_persist_set_aside_rows": "counter",
    "agft_persist_queued_rows": "gauge",
    "agft_energy_default_joules": "counter",
    "agft_command_latency_seconds": "histogram",
    "agft_command_latency_max_seconds": "gauge",
}
ROOT = Path(__file__).resolve().parents[1]


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("AGFT_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is not installed but AGFT_REQUIRE_PROMTOOL=1")
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    return found


async def test_metrics_describe_the_live_fleet(database_url: str) -> None:
    promtool = _promtool()
    async with (
        running_server(database_url, window_s=0.2, static_clock_mhz=1410) as srv,
        running_agent(srv) as _ra,
    ):
        fleet = srv.app.state.fleet
        await eventually(
            lambda: len(fleet.totals) == 2 and all(t.decisions >= 5 for t in fleet.totals.values()),
            20,
            "5 decisions per instance",
        )
        await srv.app.state.writer.flush()
        top_mhz = {rt.name: rt.arms.supported_mhz[-1] for _, rt in fleet.live.values()}
        async with httpx.AsyncClient(base_url=srv.http_url) as anon:
            assert (await anon.get("/metrics")).status_code == 401
        async with srv.client("viewer") as client:
            answer = await client.get("/metrics")
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = answer.text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in {**REQUIRED, **OTHERS}.items():
        assert name in families, f"{name} missing from /metrics"
        assert families[name].type == kind, name
    energy = [s for s in families["agft_gpu_energy_joules"].samples if s.name.endswith("_total")]
    assert {(s.labels["node"], s.labels["instance"], s.labels["gpu"]) for s in energy} == {
        ("test-node", "vllm-0", "0"),
        ("test-node", "vllm-1", "1"),
    }
    assert all(s.value > 0 for s in energy)
    clocks = {s.labels["instance"]: s.value for s in families["agft_instance_sm_clock_mhz"].samples}
    # Locked at the static clock, or at the top clock in an energy-calibration window (every
    # 5th pair of windows while the estimator is young: a scrape can land on one).
    assert set(clocks) == {"vllm-0", "vllm-1"}
    assert all(0 < c <= 1410 or c == top_mhz[name] for name, c in clocks.items()), clocks
    ratios = [s.value for s in families["agft_slo_attainment_ratio"].samples]
    assert ratios and all(0.0 <= r <= 1.0 for r in ratios)
    decided = sum(s.value for s in families["agft_decisions"].samples if s.name.endswith("_total"))
    assert decided >= 10
    count = next(s for s in families["agft_decide_seconds"].samples if s.name.endswith("_count"))
    assert count.value >= decided
    # Every command sent is timed from the telemetry that caused it; none takes forever.
    sent = next(
        s for s in families["agft_command_latency_seconds"].samples if s.name.endswith("_count")
    )
    worst = next(iter(families["agft_command_latency_max_seconds"].samples)).value
    assert sent.value >= 1 and 0 < worst < 5.0
    assert next(iter(families["agft_agents_connected"].samples)).value == 1
    persisted = next(iter(families["agft_persisted_rows"].samples))
    assert persisted.value > 0
    check = await asyncio.to_thread(
        subprocess.run,
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_grafana_dashboard_queries_only_exported_metrics() -> None:
    """Every metric a panel of deploy/grafana/agft-fleet.json reads is one /metrics has."""
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "agft-fleet.json").read_text())
    exported = set()
    for name, kind in {**REQUIRED, **OTHERS}.items():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}
        exported |= {name + s for s in suffixes.get(kind, [""])}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {m for e in exprs for m in re.findall(r"agft_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    assert {p["id"] for p in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))

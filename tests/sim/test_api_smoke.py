"""Smoke test of the public API the agent and server tests build on (sim.node.SimulatedNode)."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from node_agent.gpu.base import GpuBackend, GpuInvalidArgumentError
from sim.node import SimulatedNode
from sim.workload import TraceWorkload, shipped_trace_path


def test_virtual_node_serves_trace_and_reports_consistently() -> None:
    w = TraceWorkload.from_csv(shipped_trace_path("azure_conv_2023"), start_offset_s=0.0)
    node = SimulatedNode.create(
        gpu="h100-sxm", model="llama-3.1-8b", instances=2, workload=w, clock="virtual", seed=0
    )
    t0 = node.now()
    e0 = node.backend.total_energy_mj(0)
    node.advance_to(t0 + 60.0)
    assert node.now() == t0 + 60.0
    assert isinstance(node.backend, GpuBackend)
    assert node.backend.device_count() == 2
    assert [i.name for i in node.instances] == ["vllm-0", "vllm-1"]
    assert [i.gpu_indices for i in node.instances] == [[0], [1]]
    inst = node.instances[0]
    assert inst.engine == "vllm"
    assert inst.model_name == "meta-llama/Llama-3.1-8B-Instruct"
    done = inst.completed_requests()
    assert len(done) > 50
    text = inst.render_metrics()
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("vllm:request_success_total") and "stop" in ln
    )
    assert float(line.rsplit(" ", 1)[1]) == len(done)
    e1 = node.backend.total_energy_mj(0)
    # 60 s of a loaded H100: well above idle (75 W) and below TDP (700 W).
    assert 75 * 60 * 1000 < e1 - e0 < 700 * 60 * 1000


def test_realtime_node_http_and_clock_lock() -> None:
    node = SimulatedNode.create(
        gpu="a100-sxm", model="llama-3.1-8b", instances=1, workload=None, clock="realtime"
    )
    node.start()
    try:
        inst = node.instances[0]
        assert inst.metrics_url is not None
        with urllib.request.urlopen(inst.metrics_url, timeout=5) as resp:
            assert resp.status == 200
            assert b"vllm:num_requests_running" in resp.read()
        inst.set_metrics_available(False)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(inst.metrics_url, timeout=5)
        assert err.value.code == 503
        b = node.backend
        b.set_locked_sm_clocks_mhz(0, 1005, 1005)
        assert b.locked_sm_clocks_mhz(0) == (1005, 1005)
        with pytest.raises(GpuInvalidArgumentError):
            b.set_locked_sm_clocks_mhz(0, 1000, 1000)
        b.reset_locked_sm_clocks(0)
        assert b.locked_sm_clocks_mhz(0) is None
    finally:
        node.stop()
        node.stop()

"""Real exposition samples of each engine and generation (tests/data/serving/README.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from agft.engines import ENGINE_NAMES
from node_agent.serving import exposition
from node_agent.serving.names import BY_ENGINE, LABELS_BY_ENGINE, SGLANG, VLLM
from node_agent.serving.snapshot import SnapshotError, snapshot
from tests.serving.test_exposition_differential import check_agrees

DATA = Path(__file__).parent.parent / "data" / "serving"
VLLM_DP2 = (DATA / "vllm_v0_10_dp2.txt").read_text()
SGLANG_DOCS = (DATA / "sglang_docs_production_metrics.txt").read_text()
SGLANG_TP2 = (DATA / "sglang_tp2.txt").read_text()


def _make_samples() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_samples", DATA / "make_samples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_name_tables_cover_exactly_the_known_engines() -> None:
    assert set(BY_ENGINE) == set(ENGINE_NAMES)
    assert set(LABELS_BY_ENGINE) == set(ENGINE_NAMES)


@pytest.mark.parametrize("path", sorted(DATA.glob("*.txt")), ids=lambda p: p.name)
def test_samples_parse_as_prometheus_client_parses_them(path: Path) -> None:
    check_agrees(path.read_text())


def test_schema_built_samples_are_what_the_script_renders() -> None:
    """The README's claim: these files are make_samples.py's output, byte for byte."""
    make = _make_samples()
    assert make.vllm_v0_10_dp2() == VLLM_DP2
    assert make.sglang_tp2() == SGLANG_TP2


def test_vllm_0_10_engine_one_of_two() -> None:
    snap = snapshot(
        exposition.parse(VLLM_DP2),
        VLLM,
        match_labels=(("engine", "1"),),
        labels=LABELS_BY_ENGINE["vllm"],
    )
    assert snap.values["running"] == 8.0
    assert snap.values["waiting"] == 2.0
    assert snap.values["kv_cache_usage"] == pytest.approx(0.51)
    assert snap.values["requests_finished"] == 121 + 11 + 1  # stop + length + abort
    assert snap.values["prefix_cache_hits"] == 14000.0  # new name, not both added
    tpot = snap.histograms["inter_token_latency"]  # this generation's name for it
    assert tpot is not None and tpot.count == 5
    assert tpot.upper_bounds[:3] == (0.01, 0.025, 0.05)


def test_vllm_0_10_without_match_labels_is_refused_with_what_was_seen() -> None:
    with pytest.raises(SnapshotError, match=r"engine=\['0', '1'\].*match_labels"):
        snapshot(exposition.parse(VLLM_DP2), VLLM, labels=LABELS_BY_ENGINE["vllm"])


def test_sglang_docs_sample() -> None:
    snap = snapshot(exposition.parse(SGLANG_DOCS), SGLANG, labels=LABELS_BY_ENGINE["sglang"])
    assert snap.values["running"] == 162.0
    assert snap.values["waiting"] == 2826.0
    assert snap.values["kv_cache_usage"] == pytest.approx(0.28)
    assert snap.values["prompt_tokens"] == 8128902.0
    assert snap.values["preemptions"] is None  # not exported by that version: unknown
    itl = snap.histograms["inter_token_latency"]  # sglang:time_per_output_token_seconds
    assert itl is not None and itl.count == 7400757.0
    ttft = snap.histograms["ttft"]
    assert ttft is not None and ttft.cumulative[-1] == 11008.0


def test_sglang_tensor_parallel_ranks_are_counted_once() -> None:
    snap = snapshot(exposition.parse(SGLANG_TP2), SGLANG, labels=LABELS_BY_ENGINE["sglang"])
    assert snap.values["running"] == 24.0  # not 48: tp_rank 0 and 1 report one batch
    assert snap.values["waiting"] == 5.0
    assert snap.values["preemptions"] == 2.0  # sglang:num_retracted_requests_total, once
    assert snap.values["prefix_cache_hits"] == 200100.0
    assert snap.values["prefix_cache_queries"] == 812890.0
    itl = snap.histograms["inter_token_latency"]
    assert itl is not None and itl.upper_bounds[0] == 0.002 and itl.count == 4

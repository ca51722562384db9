"""Parsing vLLM's /metrics and turning two scrapes into a window."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.serving import exposition
from node_agent.serving.names import VLLM
from node_agent.serving.snapshot import snapshot, window

SAMPLE = (Path(__file__).parent / "data" / "vllm_metrics_sample.txt").read_text()


def _section_b() -> str:
    return SAMPLE.split("SECTION B (synthetic values)", 1)[1].split("\n", 1)[1]


def _exposition(
    running: float,
    gen: float,
    ttft_le: dict[str, float],
    ttft_sum: float,
    kv_name: str = "vllm:kv_cache_usage_perc",
) -> str:
    lines = [
        "# TYPE vllm:num_requests_running gauge",
        f'vllm:num_requests_running{{engine="0",model_name="m"}} {running}',
        f'{kv_name}{{engine="0",model_name="m"}} 0.25',
        "# TYPE vllm:generation_tokens_total counter",
        f'vllm:generation_tokens_total{{engine="0",model_name="m"}} {gen}',
    ]
    for le, count in ttft_le.items():
        labels = f'engine="0",le="{le}",model_name="m"'
        lines.append(f"vllm:time_to_first_token_seconds_bucket{{{labels}}} {count}")
    lines.append(f'vllm:time_to_first_token_seconds_sum{{engine="0",model_name="m"}} {ttft_sum}')
    lines.append(
        f'vllm:time_to_first_token_seconds_count{{engine="0",model_name="m"}} {ttft_le["+Inf"]}'
    )
    return "\n".join(lines) + "\n"


def test_parses_vllm_v1_sample_with_labels_and_buckets() -> None:
    samples = exposition.parse(_section_b())
    snap = snapshot(samples, VLLM)
    assert snap.values["running"] == 12.0
    assert snap.values["waiting"] == 3.0
    assert snap.values["kv_cache_usage"] == pytest.approx(0.37)
    ttft = snap.histograms["ttft"]
    assert ttft is not None
    assert ttft.upper_bounds[0] == pytest.approx(0.001)
    assert ttft.cumulative[-1] == ttft.count


def test_parses_legacy_docs_example_without_engine_label() -> None:
    section_a = (
        SAMPLE.split("=== SECTION A ===", 1)[1].split("\n", 1)[1].split("=== SECTION B", 1)[0]
    )
    lines = [ln for ln in section_a.splitlines() if ln.strip() != "..."]
    snap = snapshot(exposition.parse("\n".join(lines)), VLLM)
    assert snap.values["running"] == 8.0
    assert snap.values["generation_tokens"] == 27453.0
    assert snap.values["requests_finished"] == 132.0  # summed over finished_reason


def test_window_differences_counters_and_histograms() -> None:
    prev = snapshot(
        exposition.parse(_exposition(4, 1000, {"0.1": 5, "1.0": 8, "+Inf": 9}, 3.0)), VLLM
    )
    cur = snapshot(
        exposition.parse(_exposition(6, 1600, {"0.1": 7, "1.0": 12, "+Inf": 14}, 5.5)), VLLM
    )
    w = window(prev, cur)
    assert w.available and not w.counters_reset
    assert w.num_requests_running == 6
    assert w.generation_tokens == 600
    assert list(w.ttft_s.bucket_counts) == [2, 2, 1]
    assert w.ttft_s.count == 5
    assert w.ttft_s.sum == pytest.approx(2.5)


def test_counter_going_backwards_is_a_restart_not_a_negative_delta() -> None:
    prev = snapshot(
        exposition.parse(_exposition(4, 5000, {"0.1": 50, "1.0": 80, "+Inf": 90}, 30.0)), VLLM
    )
    cur = snapshot(
        exposition.parse(_exposition(1, 120, {"0.1": 1, "1.0": 2, "+Inf": 2}, 0.4)), VLLM
    )
    w = window(prev, cur)
    assert w.counters_reset
    assert w.generation_tokens == 120
    assert list(w.ttft_s.bucket_counts) == [1, 1, 0]


def test_missing_and_nan_metrics_stay_unknown() -> None:
    text = 'vllm:num_requests_running{engine="0",model_name="m"} NaN\n'
    w = window(None, snapshot(exposition.parse(text), VLLM))
    assert not w.HasField("num_requests_running")
    assert not w.HasField("num_requests_waiting")
    assert not w.HasField("generation_tokens")  # first scrape: no delta yet


def test_legacy_kv_cache_name_is_accepted() -> None:
    text = _exposition(1, 10, {"+Inf": 0}, 0.0, kv_name="vllm:gpu_cache_usage_perc")
    assert snapshot(exposition.parse(text), VLLM).values["kv_cache_usage"] == 0.25


def test_malformed_exposition_names_the_line() -> None:
    with pytest.raises(exposition.ExpositionError, match="line 2"):
        exposition.parse('ok_metric 1\nbad{le="0.1" 3\n')

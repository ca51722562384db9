"""Which series belong to an instance, and how an instance's series add up."""

from __future__ import annotations

import pytest

from node_agent.serving import exposition
from node_agent.serving.names import LABELS_BY_ENGINE, VLLM
from node_agent.serving.snapshot import SnapshotError, snapshot, window

VLLM_LABELS = LABELS_BY_ENGINE["vllm"]


def _two_models() -> str:
    lines = []
    for model, running, gen in (("m1", 3, 100), ("m2", 5, 900)):
        lab = f'engine="0",model_name="{model}"'
        lines += [
            f"vllm:num_requests_running{{{lab}}} {running}",
            f"vllm:generation_tokens_total{{{lab}}} {gen}",
            f'vllm:time_to_first_token_seconds_bucket{{{lab},le="0.1"}} 1',
            f'vllm:time_to_first_token_seconds_bucket{{{lab},le="+Inf"}} 2',
            f"vllm:time_to_first_token_seconds_sum{{{lab}}} 0.5",
            f"vllm:time_to_first_token_seconds_count{{{lab}}} 2",
        ]
    return "\n".join(lines)


def test_match_labels_pick_one_model_of_two() -> None:
    samples = exposition.parse(_two_models())
    m2 = snapshot(samples, VLLM, match_labels=(("model_name", "m2"),), labels=VLLM_LABELS)
    assert m2.values["running"] == 5.0
    assert m2.values["generation_tokens"] == 900.0
    ttft = m2.histograms["ttft"]
    assert ttft is not None and ttft.cumulative == (1.0, 2.0)  # not m1's added in


def test_several_models_without_match_labels_are_an_error_naming_them() -> None:
    with pytest.raises(SnapshotError, match=r"model_name=\['m1', 'm2'\]") as err:
        snapshot(exposition.parse(_two_models()), VLLM, labels=VLLM_LABELS)
    assert "('model_name', 'm1')" in str(err.value)  # tells what to set


def test_match_labels_matching_nothing_is_an_error_not_an_idle_engine() -> None:
    with pytest.raises(SnapshotError, match=r"no series match.*model_name=\['m1', 'm2'\]"):
        snapshot(
            exposition.parse(_two_models()),
            VLLM,
            match_labels=(("model_name", "m3"),),
            labels=VLLM_LABELS,
        )


def test_one_label_set_needs_no_match_labels() -> None:
    text = _two_models().split("\n")
    one = "\n".join(line for line in text if "m1" in line)
    snap = snapshot(exposition.parse(one), VLLM, labels=VLLM_LABELS)
    assert snap.values["running"] == 3.0


def test_sub_dimensions_of_one_instance_are_summed() -> None:
    text = "\n".join(
        f'vllm:request_success_total{{engine="0",finished_reason="{r}",model_name="m"}} {n}'
        for r, n in (("stop", 10), ("length", 4), ("abort", 1))
    )
    snap = snapshot(
        exposition.parse(text), VLLM, match_labels=(("engine", "0"),), labels=VLLM_LABELS
    )
    assert snap.values["requests_finished"] == 15.0


def _scrape(prompt: float, gen: float, ttft_inf: float) -> str:
    lab = 'engine="0",model_name="m"'
    return "\n".join(
        [
            f"vllm:prompt_tokens_total{{{lab}}} {prompt}",
            f"vllm:generation_tokens_total{{{lab}}} {gen}",
            f'vllm:time_to_first_token_seconds_bucket{{{lab},le="+Inf"}} {ttft_inf}',
            f"vllm:time_to_first_token_seconds_sum{{{lab}}} {ttft_inf / 10}",
            f"vllm:time_to_first_token_seconds_count{{{lab}}} {ttft_inf}",
        ]
    )


def test_a_restart_resets_every_delta_even_one_that_climbed_past_its_old_value() -> None:
    before = snapshot(exposition.parse(_scrape(1000, 5000, 40)), VLLM)
    # After a restart generation_tokens is back at 300, but prompt_tokens already reads
    # 1200 (> 1000): its plain difference (200) would be wrong; all of it is new.
    after = snapshot(exposition.parse(_scrape(1200, 300, 3)), VLLM)
    w = window(before, after)
    assert w.counters_reset
    assert w.generation_tokens == 300
    assert w.prompt_tokens == 1200
    assert w.ttft_s.count == 3

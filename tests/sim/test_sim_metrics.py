"""The /metrics exposition: vLLM V1 names, HELP, TYPE, labels and buckets, and consistency
with the simulated requests. Reference: tests/sim/data/vllm_v1_metrics_section_b.txt (section B
of shared/data/vllm/metrics_sample.txt, transcribed from vLLM's PrometheusStatLogger)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sim.engine import EngineConfig
from sim.metrics import request_token_buckets
from sim.node import SimulatedNode
from sim.workload import FixedLengths, PoissonWorkload

# ---- a strict little parser for the text exposition format ----------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|$)')


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    label_order: list[str]
    value: float


@dataclass
class Family:
    name: str
    help: str = ""
    type: str = ""
    samples: list[Sample] = field(default_factory=list)


def parse(text: str) -> dict[str, Family]:
    """Families by name, in order; raises ValueError on anything malformed."""
    fams: dict[str, Family] = {}
    current: Family | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.startswith("# HELP "):
            name, _, help_ = line[7:].partition(" ")
            current = fams.setdefault(name, Family(name))
            current.help = help_
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            if kind not in {"counter", "gauge", "histogram", "summary", "untyped"}:
                raise ValueError(f"line {lineno}: bad type {kind!r}")
            current = fams.setdefault(name, Family(name))
            current.type = kind
            continue
        if line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ValueError(f"line {lineno}: not a sample: {line!r}")
        sname, body, raw = m.groups()
        labels: dict[str, str] = {}
        order: list[str] = []
        if body:
            pos = 0
            while pos < len(body):
                lm = _LABEL.match(body, pos)
                if lm is None:
                    raise ValueError(f"line {lineno}: bad labels {body!r}")
                labels[lm.group(1)] = lm.group(2)
                order.append(lm.group(1))
                pos = lm.end()
        value = float(raw.replace("+Inf", "inf"))
        if current is None or not (sname == current.name or sname.startswith(current.name + "_")):
            raise ValueError(f"line {lineno}: sample {sname} outside its family")
        current.samples.append(Sample(sname, labels, order, value))
    return fams


def value(fams: dict[str, Family], name: str, **labels: str) -> float:
    """The single sample of ``name`` whose labels include ``labels``."""
    fam_name = name
    for suffix in ("_sum", "_count", "_bucket"):
        if name.endswith(suffix) and name[: -len(suffix)] in fams:
            fam_name = name[: -len(suffix)]
    hits = [
        s.value
        for s in fams[fam_name].samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    if len(hits) != 1:
        raise KeyError(f"{name} {labels}: {len(hits)} samples")
    return hits[0]


def buckets(fams: dict[str, Family], name: str) -> list[tuple[float, float]]:
    return [
        (float(s.labels["le"].replace("+Inf", "inf")), s.value)
        for s in fams[name].samples
        if s.name == name + "_bucket"
    ]


# ---- tests --------------------------------------------------------------------------------
REFERENCE = Path(__file__).parent / "data" / "vllm_v1_metrics_section_b.txt"
TOKEN_HISTOGRAMS = {"vllm:request_prompt_tokens", "vllm:request_generation_tokens"}


def _run(legacy: bool = False, seconds: float = 40.0, **cfg: float) -> tuple[SimulatedNode, str]:
    wl = PoissonWorkload(6.0, FixedLengths(600, 120), duration_s=seconds / 2)
    node = SimulatedNode.create(
        gpu="h100-sxm",
        model="llama-3.1-8b",
        instances=1,
        workload=wl,
        clock="virtual",
        seed=3,
        legacy_metric_names=legacy,
        engine_config=EngineConfig(**cfg),  # type: ignore[arg-type]
    )
    node.advance(seconds)
    return node, node.instances[0].render_metrics()


@pytest.fixture(scope="module")
def finished_run() -> tuple[SimulatedNode, str]:
    return _run()


def test_families_match_vllm_v1(finished_run: tuple[SimulatedNode, str]) -> None:
    ref = parse(REFERENCE.read_text())
    got = parse(finished_run[1])
    assert [(f.name, f.type, f.help) for f in got.values()] == [
        (f.name, f.type, f.help) for f in ref.values()
    ]
    for name, fam in ref.items():
        if fam.type != "histogram" or name in TOKEN_HISTOGRAMS:
            continue
        assert [b for b, _ in buckets(got, name)] == [b for b, _ in buckets(ref, name)], name


def test_token_histograms_use_vllm_1_2_5_buckets(finished_run: tuple[SimulatedNode, str]) -> None:
    got = parse(finished_run[1])
    expected = [*request_token_buckets(131072), math.inf]
    assert expected[:3] == [1.0, 2.0, 5.0] and expected[-2] == 100000.0
    for name in TOKEN_HISTOGRAMS:
        assert [b for b, _ in buckets(got, name)] == expected


def test_labels_alphabetical_and_complete(finished_run: tuple[SimulatedNode, str]) -> None:
    for fam in parse(finished_run[1]).values():
        for s in fam.samples:
            assert s.label_order == sorted(s.label_order), s
            assert s.labels["engine"] == "0"
            assert s.labels["model_name"] == "meta-llama/Llama-3.1-8B-Instruct"


def test_histograms_are_cumulative(finished_run: tuple[SimulatedNode, str]) -> None:
    fams = parse(finished_run[1])
    for name, fam in fams.items():
        if fam.type != "histogram":
            continue
        counts = [c for _, c in buckets(fams, name)]
        assert counts == sorted(counts), name
        assert counts[-1] == value(fams, name + "_count"), name


def test_counts_match_completed_requests(finished_run: tuple[SimulatedNode, str]) -> None:
    node, text = finished_run
    fams = parse(text)
    done = node.instances[0].completed_requests()
    assert len(done) > 50
    # The workload stopped arriving at 20 s; by 40 s every request has finished.
    assert value(fams, "vllm:num_requests_running") == 0
    assert value(fams, "vllm:num_requests_waiting") == 0
    assert value(fams, "vllm:request_success_total", finished_reason="stop") == len(done)
    assert value(fams, "vllm:e2e_request_latency_seconds_count") == len(done)
    assert value(fams, "vllm:time_to_first_token_seconds_count") == len(done)
    gen = sum(r.output_tokens for r in done)
    assert value(fams, "vllm:generation_tokens_total") == gen
    assert value(fams, "vllm:prompt_tokens_total") == sum(r.prompt_tokens for r in done)
    # Every token after a request's first has exactly one inter-token latency.
    assert value(fams, "vllm:inter_token_latency_seconds_count") == gen - len(done)
    assert value(fams, "vllm:e2e_request_latency_seconds_sum") == pytest.approx(
        sum(r.e2e_s for r in done)
    )
    assert value(fams, "vllm:time_to_first_token_seconds_sum") == pytest.approx(
        sum(r.ttft_s for r in done)
    )
    # Each step's tokens: all prompt tokens and all but the prefill-sampled tokens.
    assert value(fams, "vllm:iteration_tokens_total_sum") == (
        sum(r.prompt_tokens for r in done) + gen - len(done)
    )
    assert value(fams, "vllm:kv_cache_usage_perc") == 0.0


def test_gauges_while_loaded() -> None:
    wl = PoissonWorkload(60.0, FixedLengths(200, 800))
    node = SimulatedNode.create(
        gpu="a100-sxm", model="llama-3.1-8b", workload=wl, clock="virtual", seed=1
    )
    node.advance(10.0)
    running: list[float] = []
    for _ in range(20):
        node.advance(0.5)
        fams = parse(node.instances[0].render_metrics())
        running.append(value(fams, "vllm:num_requests_running"))
        assert value(fams, "vllm:num_requests_waiting") > 0
        assert 0 < value(fams, "vllm:kv_cache_usage_perc") <= 1
    # Overloaded: the A100 default of 256 running sequences fills (finishers leave between
    # steps, so a snapshot may catch a few fewer) and a queue builds.
    assert max(running) == 256
    assert min(running) > 200


def test_legacy_names() -> None:
    _, text = _run(legacy=True, seconds=10.0)
    fams = parse(text)
    assert "vllm:gpu_cache_usage_perc" in fams
    assert "vllm:time_per_output_token_seconds" in fams
    assert "vllm:kv_cache_usage_perc" not in fams
    assert "vllm:inter_token_latency_seconds" not in fams
    assert fams["vllm:time_per_output_token_seconds"].help == (
        "Histogram of time per output token in seconds."
    )


def test_prefix_cache_counters() -> None:
    node, text = _run(seconds=20.0, prefix_cache_hit_fraction=0.5)
    fams = parse(text)
    queries = value(fams, "vllm:prefix_cache_queries_total")
    hits = value(fams, "vllm:prefix_cache_hits_total")
    done = node.instances[0].completed_requests()
    assert queries >= sum(r.prompt_tokens for r in done)
    # 600-token prompts: 50 % is 300 tokens, rounded down to whole 16-token blocks.
    assert hits == pytest.approx(queries * 288 / 600)

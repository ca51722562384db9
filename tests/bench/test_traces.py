"""Traces the controller was not tuned on: Azure schema, deterministic, the shapes promised."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.traces import generate, write_azure_csv
from sim.workload import read_trace_csv


def test_each_kind_writes_an_azure_trace_the_benchmark_reads(tmp_path: Path) -> None:
    for kind in ("chat", "summarise", "poisson"):
        rows = generate(kind, seed=3, duration_s=600.0, rate=5.0)
        path = tmp_path / f"{kind}.csv.gz"
        write_azure_csv(rows, path)
        trace = read_trace_csv(path)
        assert len(trace.t) == len(rows) > 1_000
        assert np.all(np.diff(trace.t) >= 0)
        assert trace.t[-1] - trace.t[0] < 600.0
        # Same seed, same bytes.
        again = tmp_path / f"{kind}-again.csv.gz"
        write_azure_csv(generate(kind, seed=3, duration_s=600.0, rate=5.0), again)
        assert again.read_bytes() == path.read_bytes()


def test_the_shapes_are_the_ones_promised() -> None:
    bursty = generate("summarise", seed=1, duration_s=3600.0, rate=5.0)
    gaps = np.diff([r[0] for r in bursty])
    assert 2.5 < gaps.std() / gaps.mean() < 3.5  # Gamma arrivals, CV 3
    prompts = np.array([r[1] for r in bursty])
    assert prompts.min() >= 1_000 and prompts.max() <= 8_000 and 2_500 < np.median(prompts) < 3_500
    poisson = generate("poisson", seed=1, duration_s=3600.0, rate=5.0)
    gaps = np.diff([r[0] for r in poisson])
    assert 0.9 < gaps.std() / gaps.mean() < 1.1
    # Multi-turn: a later turn carries the conversation so far, so contexts run longer
    # than the first turns' prompts.
    chat = generate("chat", seed=1, duration_s=3600.0, rate=5.0)
    contexts = np.array([r[1] for r in chat])
    first_turns = np.array([r[1] for r in poisson])
    assert np.median(contexts) > 1.5 * np.median(first_turns)

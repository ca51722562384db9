"""Shared inputs of the benchmark tests: a short cut of the shipped trace."""

from __future__ import annotations

import pytest

from bench.arrivals import Arrivals, load_trace, scaled_arrivals
from bench.harness import RunSpec
from sim.workload import TraceRows, shipped_trace_path

GPU = "h100-sxm"
MODEL = "llama-3.1-8b"


@pytest.fixture(scope="session")
def rows_90s() -> TraceRows:
    """The first 90 s of the shipped Azure conv 2023 trace (part of the repository)."""
    return load_trace(shipped_trace_path("azure_conv_2023"), duration_s=90.0)


@pytest.fixture(scope="session")
def arrivals_90s(rows_90s: TraceRows) -> Arrivals:
    # About twice the trace's rate: busy enough that clocks matter, light enough to drain.
    return scaled_arrivals(rows_90s, rate_scale=2.0, seed=0)


@pytest.fixture(scope="session")
def spec_90s(arrivals_90s: Arrivals) -> RunSpec:
    """One instance over the 90 s cut, with 20 s for the last requests to finish."""
    return RunSpec(
        gpu=GPU,
        model=MODEL,
        arrivals=arrivals_90s,
        seed=0,
        window_s=1.0,
        windows=RunSpec.windows_for(arrivals_90s, 1.0, 20.0),
    )

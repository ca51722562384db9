"""Profiles are data files whose every constant cites a source."""

from __future__ import annotations

from dataclasses import fields

import pytest

from sim.profiles import (
    GpuProfile,
    ModelProfile,
    gpu_profile,
    gpu_profile_names,
    model_profile,
    model_profile_names,
    profile_sources,
)


def test_required_profiles_exist() -> None:
    assert {"h100-sxm", "a100-sxm", "h100-nvl"} <= set(gpu_profile_names())
    assert {"llama-3.1-8b", "llama-2-70b"} <= set(model_profile_names())
    assert model_profile("llama-3.1-8b").tensor_parallel == 1
    assert model_profile("llama-2-70b").tensor_parallel == 4


@pytest.mark.parametrize(("kind", "cls"), [("gpus", GpuProfile), ("models", ModelProfile)])
def test_every_constant_cites_a_source(kind: str, cls: type) -> None:
    names = gpu_profile_names() if kind == "gpus" else model_profile_names()
    wanted = {f.name for f in fields(cls)} - {"key"}
    for name in names:
        sources = profile_sources(kind, name)
        assert set(sources) == wanted, name
        for constant, source in sources.items():
            assert len(source) >= 10, (name, constant, source)


def test_model_sizes_match_their_parameter_counts() -> None:
    # Linear layers + embeddings (+ untied LM head for Llama 3.1) add up to the card's count.
    m8 = model_profile("llama-3.1-8b")
    assert m8.linear_params + 2 * m8.lm_head_params == pytest.approx(m8.total_params, rel=0.01)
    m70 = model_profile("llama-2-70b")
    assert m70.linear_params + 2 * m70.lm_head_params == pytest.approx(m70.total_params, rel=0.01)
    assert m70.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2


@pytest.mark.parametrize("name", ["h100-sxm", "a100-sxm", "h100-nvl"])
def test_gpu_constants_are_consistent(name: str) -> None:
    g = gpu_profile(name)
    assert g.sm_clock_min_mhz < g.memory_knee_mhz < g.voltage_floor_mhz < g.sm_clock_max_mhz
    assert g.idle_w < g.tdp_w
    assert (g.sm_clock_max_mhz - g.sm_clock_min_mhz) % g.sm_clock_step_mhz == 0
    assert 0 < g.memory_efficiency < 1 and 0 < g.compute_efficiency < 1
    assert g.power_reading in {"avg_1s", "instant"}

"""bench.spread: several seeds of one benchmark side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.spread import SpreadError, main, markdown, spread


def _policy(saving: float, attainment: float, ttft: float, tpot: float) -> dict[str, Any]:
    return {
        "energy_saving_pct": saving,
        "slo_attainment": attainment,
        "ttft_p90_s": ttft,
        "tpot_p90_s": tpot,
    }


def _write(root: Path, seed: int, policies: dict[str, dict[str, Any]], **settings: Any) -> Path:
    run = root / f"seed{seed}"
    run.mkdir(parents=True)
    base = {
        "trace_name": "azure_conv_2023",
        "gpu": "h100-sxm",
        "model": "llama-3.1-8b",
        "peak_load": 0.85,
        "slo": {"ttft_s": 0.5, "tpot_s": 0.05, "percentile": 90.0},
        "window_s": 1.0,
        "duration_s": None,
        "drain_s": 120.0,
        "seed": seed,
        "reference": "default",
    }
    (run / "results.json").write_text(
        json.dumps({"settings": base | settings, "policies": policies})
    )
    return run


def _runs(tmp_path: Path) -> list[Path]:
    return [
        _write(
            tmp_path,
            1,
            {
                "default": _policy(0.0, 0.960, 0.20, 0.030),
                "agft-paper": _policy(0.3, 0.961, 0.20, 0.030),
                "agft": _policy(10.0, 0.958, 0.21, 0.031),
            },
        ),
        _write(
            tmp_path,
            0,
            {
                "default": _policy(0.0, 0.950, 0.40, 0.040),
                "agft-paper": _policy(0.1, 0.950, 0.40, 0.040),
                "agft": _policy(12.0, 0.951, 0.42, 0.040),
            },
        ),
    ]


def test_values_line_up_by_seed_and_compare_to_the_named_policy(tmp_path: Path) -> None:
    s = spread(_runs(tmp_path), "agft-paper")
    assert s.seeds == [0, 1]
    assert s.saving_pct["agft"] == [12.0, 10.0]
    assert s.attainment_vs_pts["agft"] == pytest.approx([0.1, -0.3])
    assert s.attainment_vs_pts["agft-paper"] == [0.0, 0.0]
    assert s.ttft_p90_change_pct["agft"] == pytest.approx([5.0, 5.0])
    assert s.tpot_p90_change_pct["agft"] == pytest.approx([0.0, 100 * (0.031 / 0.030 - 1)])


def test_the_table_gives_mean_range_and_seeds_at_or_above(tmp_path: Path) -> None:
    text = markdown(spread(_runs(tmp_path), "agft-paper"), "conv")
    row = next(line for line in text.splitlines() if line.startswith("| agft |"))
    assert "11.0 [10.0, 12.0]" in row
    assert "-0.100 [-0.300, +0.100]" in row
    assert "| 1 of 2 |" in row


def test_runs_of_different_benchmarks_are_refused(tmp_path: Path) -> None:
    a = _write(tmp_path / "a", 0, {"default": _policy(0, 0.9, 0.2, 0.03)})
    b = _write(tmp_path / "b", 1, {"default": _policy(0, 0.9, 0.2, 0.03)}, gpu="a100-sxm")
    with pytest.raises(SpreadError, match="differ in gpu"):
        spread([a, b], "default")
    c = _write(tmp_path / "c", 0, {"default": _policy(0, 0.9, 0.2, 0.03)})
    with pytest.raises(SpreadError, match="seed appears twice"):
        spread([a, c], "default")
    with pytest.raises(SpreadError, match="not in every run"):
        spread([a], "agft-paper")


def test_the_command_line_writes_the_table_and_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "spread.md"
    runs = [str(p) for p in _runs(tmp_path)]
    assert main(["--out", str(out), "--title", "conv", *runs]) == 0
    assert out.read_text() == capsys.readouterr().out
    assert main([str(tmp_path / "missing")]) == 2
    assert "no " in capsys.readouterr().err


def test_missing_values_are_clear_errors_not_tracebacks(tmp_path: Path) -> None:
    policies = {
        "default": _policy(0.0, 0.9, 0.2, 0.03),
        "agft-paper": _policy(0.1, None, 0.2, 0.03),  # type: ignore[arg-type]
    }
    run = _write(tmp_path, 0, policies)
    with pytest.raises(SpreadError, match="no saving or attainment"):
        spread([run], "agft-paper")
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "results.json").write_text("{}")
    with pytest.raises(SpreadError, match="without settings"):
        spread([bare], "default")


def test_an_unknown_latency_is_left_out_of_the_worst_change(tmp_path: Path) -> None:
    run = _write(
        tmp_path,
        0,
        {
            "default": _policy(0.0, 0.9, 0.2, 0.03),
            "agft": _policy(5.0, 0.9, None, 0.03),  # type: ignore[arg-type]
        },
    )
    row = next(
        line
        for line in markdown(spread([run], "default"), "t").splitlines()
        if line.startswith("| agft |")
    )
    assert row.endswith("| n/a | +0.0 |")

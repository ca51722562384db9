"""`agft bench` on the command line: outputs, and clear errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import _config, _parser, main

GOOD_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _trace(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(GOOD_HEADER + body, encoding="utf-8")
    return path


def _small_trace(tmp_path: Path) -> Path:
    rows = [f"2023-11-16 18:15:{s:02d}.0000000,{200 + 10 * s},{50 + s}" for s in range(0, 40, 2)]
    return _trace(tmp_path, "\n".join(rows) + "\n")


def test_a_run_writes_results_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "--trace",
            str(_small_trace(tmp_path)),
            "--policies",
            "default,rule,static",
            "--static-clock-mhz",
            "1200",
            "--drain-s",
            "10",
            "--jobs",
            "1",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    for name in ("results.md", "results.json", "clock_load.png", "latency_cdf.png", "energy.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert list(data["policies"]) == ["default", "rule", "static"]
    assert data["settings"]["static_clock_mhz"] == 1200
    assert data["policies"]["default"]["requests_completed"] == 20
    assert "results in" in capsys.readouterr().out


def test_a_bad_trace_line_is_an_error_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = _trace(
        tmp_path,
        "2023-11-16 18:15:00.0000000,200,50\n2023-11-16 18:15:01.0000000,lots,50\n",
    )
    code = main(["--trace", str(trace), "--policies", "default", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "agft bench: error:" in err
    assert f"{trace}:3" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trace", "/nonexistent/trace.csv"], "no trace file"),
        (["--policies", "default,sometimes"], "unknown policies ['sometimes']"),
        (["--policies", "static"], "--static-clock-mhz"),
        (["--policies", ""], "names no policy"),
        (["--oracle-lookahead", "-1"], "--oracle-lookahead must not be negative"),
        (["--min-clock-fraction", "1.5"], "--min-clock-fraction must be at most 1"),
        (["--policies", "agft:miss_share=0.5"], "unknown tunable 'miss_share'"),
        (["--oracle-attainment-slack", "-1"], "--oracle-attainment-slack must be 0-100"),
        (["--policies", "agft:dwell_windows=1.5"], "is not an integer"),
    ],
)
def test_bad_options_exit_2_with_a_reason(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_rate_scale_and_peak_load_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--rate-scale", "2", "--peak-load", "0.8"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--trace", "--peak-load", "--policies", "--oracle-slowdown", "--duration-s"):
        assert option in text


def test_oracle_attainment_slack_is_given_in_points() -> None:
    args = _parser().parse_args(["--oracle-attainment-slack", "0.5"])
    assert _config(args).oracle_attainment_slack == pytest.approx(0.005)
    assert _config(_parser().parse_args([])).oracle_attainment_slack == pytest.approx(0.01)

"""`agft sim ...` (sim.cli.main): sweep writes a table and a readable figure."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sim.cli import main


def test_help_works(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--help"])
    assert e.value.code == 0
    assert "--gpu" in capsys.readouterr().out


def test_sweep_writes_csv_markdown_and_png(tmp_path: Path) -> None:
    rc = main(
        ["sweep", "--gpu", "a100-sxm", "--model", "llama-3.1-8b", "--out", str(tmp_path),
         "--loads", "decode-heavy,prefill-heavy", "--clocks", "810,1110,1410", "--window", "3"]
    )  # fmt: skip
    assert rc == 0
    stem = tmp_path / "sweep_a100-sxm_llama-3.1-8b"
    with open(f"{stem}.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    assert {r["load"] for r in rows} == {"decode-heavy", "prefill-heavy"}
    by = {(r["load"], int(r["sm_clock_mhz"])): r for r in rows}
    assert float(by["decode-heavy", 810]["power_w"]) < float(by["decode-heavy", 1410]["power_w"])
    md = Path(f"{stem}.md").read_text()
    assert "| SM clock (MHz) |" in md and "Lowest energy per token" in md
    png = Path(f"{stem}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_sweep_rejects_unsupported_clock(tmp_path: Path) -> None:
    rc = main(["sweep", "--gpu", "h100-sxm", "--model", "llama-3.1-8b", "--out", str(tmp_path),
               "--clocks", "1000"])  # fmt: skip
    assert rc == 2


def test_profiles_lists_everything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert "h100-nvl" in out and "llama-2-70b" in out

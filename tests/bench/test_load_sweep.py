"""The load sweep: both promises per load, one table and one PNG per trace."""

from __future__ import annotations

import json
from pathlib import Path

from bench.load_sweep import SLO_ONLY_AGFT, run_cell, run_state_plan_cell, table
from sim.workload import shipped_trace_path


def test_a_sweep_cell_writes_both_promises_and_the_table_reads_them(tmp_path: Path) -> None:
    trace = shipped_trace_path("azure_conv_2023")
    run_cell(trace, 0.5, 0, tmp_path, jobs=1, duration_s=45.0)
    run_state_plan_cell(trace, 0.5, 0, tmp_path, jobs=1, duration_s=45.0)
    cell = tmp_path / "azure_conv_2023" / "peak0.5"
    default = json.loads((cell / "default" / "seed0" / "results.json").read_text())
    slo_only = json.loads((cell / "slo-only" / "seed0" / "results.json").read_text())
    assert set(default["policies"]) == {"default", "agft", "rule", "best-static", "oracle-plan"}
    assert SLO_ONLY_AGFT in slo_only["policies"]
    # Same arrivals for both promises; the SLO-only bound has no slowdown cap.
    assert default["settings"]["requests_in_run"] == slo_only["settings"]["requests_in_run"]
    assert default["settings"]["oracle"]["slowdown"] == 0.1
    assert slo_only["settings"]["oracle"]["slowdown"] is None
    # Without a slowdown cap the bound can only save as much or more.
    assert (
        slo_only["policies"]["oracle-plan"]["energy_saving_pct"]
        >= default["policies"]["oracle-plan"]["energy_saving_pct"]
    )
    text = table(tmp_path)["azure_conv_2023"]
    rows = [line for line in text.splitlines() if line.startswith("| 0.5 |")]
    assert [r.split(" | ")[1] for r in rows] == ["default", "slo-only"]
    plan = default["policies"]["oracle-plan"]["energy_saving_pct"]
    assert f"{plan:.1f} (1/1)" in rows[0]  # the bound always keeps its promises
    # state-plan, run beside the cell on the same arrivals, joins each promise's row.
    for row, promise in zip(rows, ("default", "slo-only"), strict=True):
        extra = cell / promise / "seed0" / "state-plan" / "results.json"
        saving = json.loads(extra.read_text())["policies"]["state-plan"]["energy_saving_pct"]
        assert f"{saving:.1f} (" in row
    assert (tmp_path / "azure_conv_2023.png").stat().st_size > 10_000


def test_a_sweep_on_another_card_says_so(tmp_path: Path) -> None:
    trace = shipped_trace_path("azure_conv_2023")
    run_cell(trace, 0.5, 0, tmp_path, jobs=1, duration_s=30.0, gpu="a100-sxm")
    cell = tmp_path / "azure_conv_2023" / "peak0.5" / "default" / "seed0"
    settings = json.loads((cell / "results.json").read_text())["settings"]
    assert (settings["gpu"], settings["model"]) == ("a100-sxm", "llama-3.1-8b")
    assert table(tmp_path)["azure_conv_2023"].startswith("## azure_conv_2023 (a100-sxm / ")

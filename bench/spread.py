"""Several seeds of one benchmark, side by side: is a difference a result or luck?

One seed gives one draw of the arrivals (the trace is thinned or copied at random to reach
its rate) and of the simulator's noise. SLO attainment differences between policies that
both stay near default clocks are a few dozen requests out of ~40 000, and a clock change
early in a run reorders later batches, so single-seed differences of ±0.05 points are
noise. This module reads the results.json of runs that differ only in --seed and reports,
per policy, the mean and the range of its saving and of its attainment against a
comparison policy, seed by seed.

    python -m bench.spread --against agft-paper --out DIR/spread.md RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Settings that must agree for runs to be the same benchmark under different seeds.
_SAME = ("trace_name", "gpu", "model", "peak_load", "slo", "window_s", "duration_s", "drain_s")


class SpreadError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Spread:
    """Per policy: saving (%), attainment minus the comparison policy's (points), p90
    TTFT and TPOT change against default (%), one value per seed, in seed order."""

    seeds: list[int]
    against: str
    saving_pct: dict[str, list[float]]
    attainment_vs_pts: dict[str, list[float]]
    ttft_p90_change_pct: dict[str, list[float]]
    tpot_p90_change_pct: dict[str, list[float]]


def _load(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise SpreadError(f"no {path}") from None
    except json.JSONDecodeError as err:
        raise SpreadError(f"{path}: not JSON ({err})") from None
    settings = data.get("settings") if isinstance(data, dict) else None
    if not isinstance(settings, dict) or not isinstance(data.get("policies"), dict):
        raise SpreadError(f"{path}: a results.json without settings or policies")
    if not isinstance(settings.get("seed"), int) or "reference" not in settings:
        raise SpreadError(f"{path}: settings without a seed or a reference policy")
    return data


def _same_benchmark(runs: list[dict[str, Any]]) -> None:
    first = runs[0]["settings"]
    for run in runs[1:]:
        for key in _SAME:
            if run["settings"].get(key) != first.get(key):
                raise SpreadError(
                    f"runs differ in {key}: {first.get(key)!r} and {run['settings'].get(key)!r}"
                )
    seeds = [r["settings"]["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise SpreadError(f"a seed appears twice: {seeds}")


def _change_pct(value: float | None, reference: float | None) -> float:
    if value is None or reference is None or reference <= 0:
        return float("nan")
    return 100.0 * (value / reference - 1.0)


def spread(run_dirs: list[Path], against: str) -> Spread:
    runs = sorted((_load(d) for d in run_dirs), key=lambda r: int(r["settings"]["seed"]))
    if not runs:
        raise SpreadError("no runs given")
    _same_benchmark(runs)
    names = [n for n in runs[0]["policies"] if all(n in r["policies"] for r in runs)]
    if against not in names:
        raise SpreadError(f"policy {against!r} is not in every run (common: {names})")
    out = Spread([int(r["settings"]["seed"]) for r in runs], against, {}, {}, {}, {})
    for name in names:
        saving, attainment, ttft, tpot = [], [], [], []
        for run in runs:
            p, ref = run["policies"][name], run["policies"][run["settings"]["reference"]]
            vs = run["policies"][against]["slo_attainment"]
            values = (p.get("energy_saving_pct"), p.get("slo_attainment"), vs)
            if any(not isinstance(v, int | float) for v in values):
                seed = run["settings"].get("seed")
                raise SpreadError(f"seed {seed}: {name} or {against} has no saving or attainment")
            saving.append(float(p["energy_saving_pct"]))
            attainment.append(100.0 * (p["slo_attainment"] - vs))
            ttft.append(_change_pct(p["ttft_p90_s"], ref["ttft_p90_s"]))
            tpot.append(_change_pct(p["tpot_p90_s"], ref["tpot_p90_s"]))
        out.saving_pct[name] = saving
        out.attainment_vs_pts[name] = attainment
        out.ttft_p90_change_pct[name] = ttft
        out.tpot_p90_change_pct[name] = tpot
    return out


def _worst(values: list[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    return f"{max(finite):+.1f}" if finite else "n/a"


def _cell(values: list[float], fmt: str) -> str:
    mean = statistics.fmean(values)
    return f"{mean:{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def markdown(s: Spread, title: str) -> str:
    lines = [
        f"### {title}",
        "",
        f"Seeds {', '.join(map(str, s.seeds))}. Each cell: mean [lowest, highest] over the seeds.",
        "",
        f"| policy | saving % | SLO met minus {s.against} (points) | seeds at or above "
        f"{s.against} | worst p90 TTFT change % | worst p90 TPOT change % |",
        "|---|---|---|---|---|---|",
    ]
    for name, saving in s.saving_pct.items():
        att = s.attainment_vs_pts[name]
        # A few requests either way is a tie, not a loss: 0.005 points is 2 of 40 000.
        at_or_above = sum(1 for a in att if a >= -0.005)
        lines.append(
            f"| {name} | {_cell(saving, '.1f')} | {_cell(att, '+.3f')} "
            f"| {at_or_above} of {len(att)} | {_worst(s.ttft_p90_change_pct[name])} "
            f"| {_worst(s.tpot_p90_change_pct[name])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.spread", description=__doc__)
    p.add_argument("runs", nargs="+", type=Path, help="agft bench --out directories")
    p.add_argument("--against", default="agft-paper", help="policy attainment is compared to")
    p.add_argument("--title", default=None)
    p.add_argument("--out", type=Path, default=None, help="write the table here too")
    args = p.parse_args(argv)
    try:
        s = spread(args.runs, args.against)
    except SpreadError as err:
        print(f"bench.spread: error: {err}", file=sys.stderr)
        return 2
    title = args.title or args.runs[0].name
    text = markdown(s, title)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

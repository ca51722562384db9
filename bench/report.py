"""results.json and results.md of a benchmark."""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from bench.plan import CONSTRAINTS
from bench.plan_search import PlanTry
from bench.runner import REFERENCE, BenchResult
from bench.state_plan import StatePlanResult
from server.control.agft.signals import CONTEXT_SCALE

# Policy fields of the Markdown table: (key, header, format).
_TABLE: tuple[tuple[str, str, str], ...] = (
    ("energy_j", "energy (kJ)", "kj"),
    ("energy_saving_pct", "saving", "pct"),
    ("edp_change_pct", "EDP change", "pct"),
    ("ttft_p50_s", "TTFT p50 (ms)", "ms"),
    ("ttft_p90_s", "TTFT p90 (ms)", "ms"),
    ("ttft_p99_s", "TTFT p99 (ms)", "ms"),
    ("tpot_p50_s", "TPOT p50 (ms)", "ms"),
    ("tpot_p90_s", "TPOT p90 (ms)", "ms"),
    ("tpot_p99_s", "TPOT p99 (ms)", "ms"),
    ("slo_attainment", "SLO met", "share"),
    ("clock_switches", "switches", "int"),
    ("cold_start_share", "cold/warm saving after 5 min", "ratio"),
    ("decide_cpu_ms", "CPU/decision (ms)", "cpu"),
    ("requests_completed", "requests done", "int"),
)


def _settings(result: BenchResult) -> dict[str, Any]:
    c = result.config
    return {
        "trace": str(c.trace),
        "trace_name": c.trace.name.split(".")[0],
        "gpu": c.gpu,
        "model": c.model,
        "rate_scale": result.rate_scale,
        "peak_load": c.peak_load,
        "capacity_rps": result.capacity.rps if result.capacity else None,
        "capacity_sample_requests": result.capacity.sample_requests if result.capacity else None,
        "busiest_minute_rps_unscaled": result.busiest_unscaled_rps,
        "busiest_minute_rps": result.arrivals.busiest_rate_rps(),
        "requests_in_run": len(result.arrivals),
        "slo": {
            "ttft_s": c.slo.ttft_s,
            "tpot_s": c.slo.tpot_s,
            "percentile": c.slo.percentile,
        },
        "seed": c.seed,
        "window_s": c.window_s,
        "duration_s": c.duration_s,
        "drain_s": c.drain_s,
        "windows": result.windows,
        "lease_s": result.lease_s,
        "f_max_mhz": result.f_max_mhz,
        "reference": REFERENCE,
        "static_clock_mhz": c.static_clock_mhz,
        "best_static": {"step_mhz": c.static_step_mhz, "min_clock_fraction": c.min_clock_fraction},
        "oracle": {
            "step_mhz": c.oracle_step_mhz,
            "min_clock_fraction": c.min_clock_fraction,
            "slowdown": c.oracle_slowdown,
            "attainment_slack_pts": 100.0 * c.oracle_attainment_slack,
            "lookahead_windows": c.oracle_lookahead,
            "plan_step_mhz": c.plan_step_mhz,
            "plan_lookahead_windows": c.plan_lookahead,
            "budget": c.oracle_budget,
        },
    }


def _points(value: float) -> str:
    return f"{value:g} point" + ("" if value == 1 else "s")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: write null for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def results_dict(result: BenchResult) -> dict[str, Any]:
    policies: dict[str, dict[str, Any]] = {}
    for name, summary in result.summaries.items():
        entry = dict(summary)
        cold = result.cold_starts.get(name)
        # bench/cold_start.py: the same first minutes, cold against warm.
        entry["cold_start_share"] = cold.share if cold is not None else None
        entry["cold_saving_pct"] = cold.cold_saving_pct if cold is not None else None
        entry["warm_saving_pct"] = cold.warm_saving_pct if cold is not None else None
        entry["cold_from_start_pct"] = cold.cold_from_start_pct if cold is not None else None
        entry["warm_from_start_pct"] = cold.warm_from_start_pct if cold is not None else None
        if name == "best-static" and result.best_static is not None:
            entry["best_static_clock_mhz"] = result.best_static.clock_mhz
        if name == "oracle" and result.oracle_steps is not None:
            steps = result.oracle_steps
            entry["oracle_fallback_windows"] = sum(s.fallback for s in steps)
            entry["oracle_candidates_per_window"] = (
                sum(s.candidates for s in steps) / len(steps) if steps else None
            )
        if name == "oracle-plan" and result.plan is not None:
            chosen = result.plan.chosen
            entry["plan_held"] = chosen is not None
            entry["plan_runs"] = sum(t.ran for t in result.plan.tries)
            entry["plan_source"] = chosen.source if chosen is not None else None
            entry["plan_fill"] = list(chosen.fill) if chosen and chosen.fill else None
        if name == "state-plan" and result.state_plan is not None:
            chosen_map = result.state_plan.chosen
            entry["state_plan_held"] = chosen_map is not None
            entry["state_plan_fill"] = chosen_map.fill if chosen_map is not None else None
            entry["state_plan_train_seed"] = result.state_plan.train_seed
        policies[name] = entry
    out: dict[str, Any] = {"settings": _settings(result), "policies": policies}
    if result.state_plan is not None:
        out["state_plan"] = _state_plan_dict(result.state_plan)
    if result.plan is not None:
        th = result.plan.thresholds
        out["oracle_plan"] = {
            "thresholds": {
                "ttft_s": th.ttft_s,
                "itl_s": th.itl_s,
                "slack": dict(zip(CONSTRAINTS, th.slack, strict=True)),
            },
            "tries": [_plan_try(t) for t in result.plan.tries],
            "chosen": _plan_try(result.plan.chosen) if result.plan.chosen else None,
            "closest_broken": (
                _plan_try(result.plan.closest_broken) if result.plan.closest_broken else None
            ),
        }
    if result.best_static is not None:
        out["best_static_grid"] = [
            {
                "clock_mhz": p.clock_mhz,
                "meets_slo": p.meets,
                "energy_j": p.summary["energy_j"],
                **_figures(p.summary),
            }
            for p in result.best_static.grid
        ]
    # Machine-dependent: excluded, with decide_cpu_ms, from "same seed, same numbers".
    wall = {name: run.wall_s for name, run in result.runs.items()}
    if result.best_static is not None:
        wall["best-static"] = result.best_static.wall_s  # the whole grid search
    if result.plan is not None:
        wall["oracle-plan"] = result.plan.wall_s
    if result.state_plan is not None:
        wall["state-plan"] = result.state_plan.wall_s
    out["timing"] = {
        "machine": f"{platform.machine()} {platform.system()}, Python {platform.python_version()}",
        "cpus": os.cpu_count(),
        "capacity_wall_s": result.capacity.wall_s if result.capacity else None,
        "wall_s": wall,
    }
    return _finite(out)  # type: ignore[no-any-return]


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "kj":
        return f"{value / 1000:.1f}"
    if kind == "pct":
        return f"{value:+.1f} %"
    if kind == "ms":
        return f"{1000 * value:.1f}"
    if kind == "share":
        return f"{100 * value:.2f} %"
    if kind == "cpu":
        return f"{value:.3f}"
    if kind == "ratio":
        return f"{100 * value:.0f} %"
    return str(value)


def results_markdown(data: dict[str, Any], plots: list[str]) -> str:
    s = data["settings"]
    slo = s["slo"]
    load = (
        f"peak load {s['peak_load']:.0%} of capacity ({s['capacity_rps']:.2f} req/s)"
        if s["peak_load"] is not None
        else "rate as given"
    )
    lines = [
        f"# agft bench: {s['trace_name']} on {s['gpu']} / {s['model']}",
        "",
        f"- requests: {s['requests_in_run']} (rate scale {s['rate_scale']:.4f}, {load}; "
        f"busiest minute {s['busiest_minute_rps']:.2f} req/s)",
        f"- SLO: TTFT {slo['ttft_s']} s and TPOT {slo['tpot_s']} s at p{slo['percentile']:g}",
        f"- {s['windows']} windows of {s['window_s']} s (trace + {s['drain_s']:g} s drain), "
        f"seed {s['seed']}, lease {s['lease_s']:g} s",
        "",
        "| policy | " + " | ".join(h for _, h, _ in _TABLE) + " |",
        "|---|" + "---:|" * len(_TABLE),
    ]
    for name, entry in data["policies"].items():
        label = name
        if name == "best-static" and entry.get("best_static_clock_mhz") is not None:
            label = f"best-static ({entry['best_static_clock_mhz']} MHz)"
        cells = [_cell(entry.get(key), kind) for key, _, kind in _TABLE]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Saving and EDP change are against the default-clock run of the same requests; "
        "EDP uses mean end-to-end latency as the delay. TPOT is per request, "
        "(finish - first token) / (output tokens - 1). SLO met: share of all arrivals "
        "meeting both objectives. See docs/BENCHMARK.md for every definition.",
    ]
    grid = data.get("best_static_grid")
    if grid:
        lines += [
            "",
            "## best-static grid",
            "",
            "| clock (MHz) | meets SLO | saving | SLO met | TTFT p90 (ms) | TPOT p90 (ms) |",
            "|---:|:---:|---:|---:|---:|---:|",
        ]
        for p in grid:
            lines.append(
                f"| {p['clock_mhz']} | {'yes' if p['meets_slo'] else 'no'} "
                f"| {_cell(p['energy_saving_pct'], 'pct')} | {_cell(p['slo_attainment'], 'share')} "
                f"| {_cell(p['ttft_p90_s'], 'ms')} | {_cell(p['tpot_p90_s'], 'ms')} |"
            )
    oracle = data["policies"].get("oracle")
    if oracle is not None:
        o = s["oracle"]
        lines += [
            "",
            "## oracle",
            "",
            f"Grid every {o['step_mhz']} MHz from f_max down to {o['min_clock_fraction']:.0%} of "
            f"it, plus default clocks; lookahead {o['lookahead_windows']} windows at default; "
            f"budget min(SLO, (1 + {o['slowdown']:g}) x default) measured per "
            f"{'window' if o['budget'] == 'window' else 'run so far (cumulative)'}. "
            f"Windows with no clock within budget (default clocks): "
            f"{oracle.get('oracle_fallback_windows')}; candidates simulated per window: "
            f"{_cell(oracle.get('oracle_candidates_per_window'), 'cpu')}.",
        ]
    plan = data.get("oracle_plan")
    if plan is not None:
        th = plan["thresholds"]
        slowdown = s["oracle"]["slowdown"]
        caps = (
            "no slowdown cap (the SLO-only promise)"
            if slowdown is None
            else f"thresholds from default clocks: TTFT {_cell(th['ttft_s'], 'ms')} ms, "
            f"inter-token latency {_cell(th['itl_s'], 'ms')} ms (p90 x (1 + {slowdown:g}))"
        )
        lines += [
            "",
            "## oracle-plan",
            "",
            f"Promises: {caps}; SLO attainment at most "
            f"{_points(s['oracle']['attainment_slack_pts'])} below default's. "
            "Every schedule below ran for real (seeds: a policy's own run); "
            "the best that keeps every promise is the result:",
            "",
            "| run | schedule | fill (TTFT / ITL / SLO) | windows repaired "
            "| predicted saving | saving | TTFT p90 (ms) | TPOT p90 (ms) | SLO met "
            "| over promise | holds |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---|:---:|",
        ]
        ref_energy = data["policies"][REFERENCE]["energy_j"]
        for i, t in enumerate(plan["tries"], 1):
            fill = " / ".join(f"{v:.3g}" for v in t["fill"].values()) if t["fill"] else "-"
            saved_j = t["predicted_saving_j"]
            predicted = 100.0 * saved_j / ref_energy if ref_energy and saved_j else None
            lines.append(
                f"| {i} | {t['source']} | {fill} | {t['windows_repaired']} "
                f"| {_cell(predicted, 'pct')} "
                f"| {_cell(t['energy_saving_pct'], 'pct')} | {_cell(t['ttft_p90_s'], 'ms')} "
                f"| {_cell(t['tpot_p90_s'], 'ms')} | {_cell(t['slo_attainment'], 'share')} "
                f"| {_over(t['over_promise'])} | {'yes' if t['holds'] else 'no'} |"
            )
        chosen, closest = plan.get("chosen"), plan.get("closest_broken")
        lines.append("")
        if chosen is None:
            lines.append("No schedule kept every promise: oracle-plan is the default run.")
        else:
            lines.append(
                f"Result: {chosen['source']}, {_cell(chosen['energy_saving_pct'], 'pct')}."
            )
        if closest is not None:
            lines.append(
                f"The closest broken schedule that saved more ({closest['source']}, "
                f"{_cell(closest['energy_saving_pct'], 'pct')}) was over its promise by "
                f"{_over(closest['over_promise'])}."
            )
    lines += _state_plan_lines(data.get("state_plan"))
    if plots:
        lines += ["", "## plots", ""]
        lines += [f"![{p}]({p})" for p in plots]
    t = data["timing"]
    lines += ["", "## wall time", "", f"Machine: {t['machine']}.", ""]
    lines += [f"- {name}: {wall:.1f} s" for name, wall in t["wall_s"].items()]
    return "\n".join(lines) + "\n"


def _state_plan_lines(plan: dict[str, Any] | None) -> list[str]:
    if plan is None:
        return []
    lines = [
        "",
        "## state-plan",
        "",
        f"A clock per state bucket, trained on seed {plan['train_seed']}'s arrivals and run "
        "on these; every map below ran for real, the best that keeps every promise is the "
        "result:",
        "",
        "| fill | saving | TTFT p90 (ms) | TPOT p90 (ms) | SLO met | over promise | holds |",
        "|---:|---:|---:|---:|---:|---|:---:|",
    ]
    for t in plan["tries"]:
        lines.append(
            f"| {t['fill']:.2f} | {_cell(t['energy_saving_pct'], 'pct')} "
            f"| {_cell(t['ttft_p90_s'], 'ms')} | {_cell(t['tpot_p90_s'], 'ms')} "
            f"| {_cell(t['slo_attainment'], 'share')} | {_over(t['over_promise'])} "
            f"| {'yes' if t['holds'] else 'no'} |"
        )
    lines.append("")
    if plan["chosen_fill"] is None:
        lines.append("No map kept every promise: state-plan is the default run.")
    else:
        lines.append(f"Result: the map of fill {plan['chosen_fill']:.2f}.")
    return lines


def _over(over: dict[str, float]) -> str:
    """Only what is broken: p90s as a share over the cap, attainment in points."""
    parts = []
    for name, value in over.items():
        if value is None or value <= 0:
            continue
        if not math.isfinite(value):
            parts.append(f"{name}: no figure")
        elif name == "slo_misses":
            parts.append(f"SLO attainment {value:.2g} pts")
        else:
            label = "p90 TTFT" if name == "ttft_p90" else "p90 TPOT"
            parts.append(f"{label} +{100 * value:.2g} %")
    return ", ".join(parts) if parts else "-"


def _figures(summary: dict[str, Any]) -> dict[str, Any]:
    """The whole-run figures a search's tries are judged on."""
    keys = ("energy_saving_pct", "slo_attainment", "ttft_p90_s", "tpot_p90_s")
    return {k: summary[k] for k in keys}


def _plan_try(t: PlanTry) -> dict[str, Any]:
    return {
        "source": t.source,
        "ran": t.ran,
        "fill": dict(zip(CONSTRAINTS, t.fill, strict=True)) if t.fill else None,
        "windows_repaired": t.repaired,
        "price": t.price,
        "predicted_saving_j": t.predicted_saving_j,
        **_figures(t.summary),
        # Over each promise: p90s as a share over their cap, attainment in points.
        "over_promise": dict(zip(CONSTRAINTS, t.excess, strict=True)),
        "holds": t.holds,
    }


def _state_plan_dict(plan: StatePlanResult) -> dict[str, Any]:
    b = plan.buckets
    return {
        "train_seed": plan.train_seed,
        # On the server's units, not the context's scale.
        "running_edges": [e * CONTEXT_SCALE[2] for e in b.running_edges],
        "prompt_tokens_per_s_edges": [e * CONTEXT_SCALE[0] for e in b.prompt_edges],
        "bucket_windows": plan.bucket_windows,
        "tries": [
            {
                "fill": t.fill,
                "clocks_mhz": list(t.clocks),
                **_figures(t.summary),
                "over_promise": dict(zip(CONSTRAINTS, t.excess, strict=True)),
                "holds": t.holds,
            }
            for t in plan.tries
        ],
        "chosen_fill": plan.chosen.fill if plan.chosen is not None else None,
    }


def write_results(result: BenchResult, out: Path, plots: list[str]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    data = results_dict(result)
    (out / "results.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    (out / "results.md").write_text(results_markdown(data, plots), encoding="utf-8")
    return data

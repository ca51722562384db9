"""Tables (CSV, Markdown) and a figure (PNG) of a clock sweep."""

from __future__ import annotations

import csv
from dataclasses import asdict, fields
from pathlib import Path

from sim.profiles import gpu_profile
from sim.sweep import LOADS, SweepPoint

__all__ = ["write_csv", "write_markdown", "write_png"]

_COLORS = {"prefill-heavy": "#c0392b", "decode-heavy": "#2471a3", "mixed": "#7d3c98"}


def write_csv(points: list[SweepPoint], path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        names = [f.name for f in fields(SweepPoint)]
        w.writerow(names)
        for p in points:
            row = asdict(p)
            w.writerow([f"{row[n]:.6g}" if isinstance(row[n], float) else row[n] for n in names])


def _by_load(points: list[SweepPoint]) -> dict[str, list[SweepPoint]]:
    out: dict[str, list[SweepPoint]] = {}
    for p in points:
        out.setdefault(p.load, []).append(p)
    for v in out.values():
        v.sort(key=lambda p: p.sm_clock_mhz)
    return out


def write_markdown(points: list[SweepPoint], path: Path) -> None:
    if not points:
        raise ValueError("no sweep points")
    gpu, model = points[0].gpu, points[0].model
    f_max = gpu_profile(gpu).sm_clock_max_mhz
    lines = [f"# Clock sweep: {model} on {gpu}", ""]
    for load, pts in _by_load(points).items():
        top = max(pts, key=lambda p: p.sm_clock_mhz)
        best = min(pts, key=lambda p: p.j_per_token)
        lines += [
            f"## {load}: {LOADS[load].description if load in LOADS else ''}",
            "",
            f"Lowest energy per token at {best.sm_clock_mhz} MHz "
            f"({best.sm_clock_mhz / f_max:.0%} of f_max): "
            f"{1 - best.j_per_token / top.j_per_token:.0%} less than at {top.sm_clock_mhz} MHz, "
            f"steps x{best.step_time_ms / top.step_time_ms:.2f}.",
            "",
            "| SM clock (MHz) | effective (MHz) | step (ms) | x f_max step | tokens/step "
            "| power/GPU (W) | capped | mJ/token | mJ/output token |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in sorted(pts, key=lambda p: -p.sm_clock_mhz):
            lines.append(
                f"| {p.sm_clock_mhz} | {p.effective_clock_mhz:.0f} | {p.step_time_ms:.2f} "
                f"| {p.step_time_ms / top.step_time_ms:.3f} | {p.tokens_per_step:.0f} "
                f"| {p.power_w:.0f} | {p.power_capped_share:.0%} | {1000 * p.j_per_token:.3f} "
                f"| {1000 * p.j_per_output_token:.2f} |"
            )
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def write_png(points: list[SweepPoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not points:
        raise ValueError("no sweep points")
    gpu, model = points[0].gpu, points[0].model
    prof = gpu_profile(gpu)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), constrained_layout=True)
    ax_t, ax_p, ax_e = axes
    for load, pts in _by_load(points).items():
        xs = [p.sm_clock_mhz for p in pts]
        top = max(pts, key=lambda p: p.sm_clock_mhz)
        color = _COLORS.get(load)
        ax_t.plot(xs, [p.step_time_ms / top.step_time_ms for p in pts], "o-", ms=3,
                  color=color, label=load)  # fmt: skip
        ax_p.plot(xs, [p.power_w for p in pts], "o-", ms=3, color=color, label=load)
        rel = [p.j_per_token / top.j_per_token for p in pts]
        i = min(range(len(rel)), key=rel.__getitem__)
        label = f"{load}: min at {xs[i]} MHz ({1 - rel[i]:.0%} less)"
        ax_e.plot(xs, rel, "o-", ms=3, color=color, label=label)
        ax_e.plot([xs[i]], [rel[i]], "*", ms=13, color=color)
    ax_p.axhline(prof.tdp_w, ls="--", color="grey", lw=1)
    ax_p.text(prof.sm_clock_min_mhz, prof.tdp_w, f" TDP {prof.tdp_w:.0f} W", va="bottom",
              color="grey", fontsize=8)  # fmt: skip
    ax_p.axhline(prof.idle_w, ls=":", color="grey", lw=1)
    ax_p.text(prof.sm_clock_min_mhz, prof.idle_w, f" idle {prof.idle_w:.0f} W", va="bottom",
              color="grey", fontsize=8)  # fmt: skip
    ax_t.set_title("Step time (relative to the highest clock)")
    ax_t.set_ylabel("x step time at f_max")
    ax_p.set_title("Average power per GPU")
    ax_p.set_ylabel("W")
    ax_p.set_ylim(0, prof.tdp_w * 1.1)
    ax_e.set_title("Energy per token (relative to the highest clock)")
    ax_e.set_ylabel("x energy per token at f_max")
    for ax in axes:
        ax.set_xlabel("locked SM clock (MHz)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Simulated {model} on {prof.nvml_name} ({gpu}): steady loads against SM clock",
        fontsize=12,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""PNG figures of a benchmark: clock and load over time, latency CDFs, energy per policy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.harness import PolicyRun
from bench.runner import REFERENCE, BenchResult

_SMOOTH_S = 10.0


def _moving_mean(values: NDArray[np.float64], n: int) -> NDArray[np.float64]:
    if n <= 1 or len(values) < n:
        return values
    kernel = np.ones(n) / n
    out: NDArray[np.float64] = np.convolve(values, kernel, mode="same")
    return out


def _clock_series(run: PolicyRun) -> NDArray[np.float64]:
    # Default clocks run at f_max under load: drawn there, so a lock reads as a drop.
    return np.asarray(
        [run.f_max_mhz if c is None else c for c in run.clock_in_force_mhz], dtype=np.float64
    )


def plot_clock_load(result: BenchResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    runs = result.runs
    w = result.config.window_s
    n = max(1, round(_SMOOTH_S / w))
    fig, axes = plt.subplots(
        len(runs), 1, figsize=(12, 1.9 * len(runs) + 0.8), sharex=True, squeeze=False
    )
    arrivals = result.arrivals.per_window_counts(w, result.windows).astype(np.float64) / w
    for ax, (name, run) in zip(axes[:, 0], runs.items(), strict=True):
        t = (np.arange(len(run.clock_in_force_mhz)) + 1) * w
        ax.step(t, _clock_series(run), where="pre", lw=0.7, color="#1f4e79")
        ax.set_ylabel("MHz", color="#1f4e79")
        ax.set_ylim(0, run.f_max_mhz * 1.08)
        ax.set_title(name, fontsize=9, loc="left")
        load = ax.twinx()
        load.plot(t, _moving_mean(arrivals[: len(t)], n), lw=0.7, color="#c55a11", label="load")
        load.set_ylabel("req/s", color="#c55a11")
        load.set_ylim(bottom=0)
    axes[-1, 0].set_xlabel(
        f"virtual time (s); blue: SM clock in force (default clocks drawn at f_max); "
        f"orange: arrivals per second, {_SMOOTH_S:g} s mean"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _cdf(ax: Any, values: list[float], label: str) -> None:
    if not values:
        return
    xs = np.sort(np.asarray(values))
    ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), lw=1, label=label)


def plot_latency_cdfs(result: BenchResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax_ttft, ax_tpot) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, run in result.runs.items():
        _cdf(ax_ttft, [r.ttft_s for r in run.requests], name)
        _cdf(ax_tpot, [r.tpot_s for r in run.requests if r.output_tokens > 1], name)
    slo = result.config.slo
    for ax, title, limit in ((ax_ttft, "TTFT", slo.ttft_s), (ax_tpot, "TPOT", slo.tpot_s)):
        ax.axvline(limit, color="black", ls="--", lw=0.8, label="SLO")
        ax.axhline(slo.percentile / 100.0, color="grey", ls=":", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(f"{title} (s)")
        ax.set_ylabel("share of requests")
        ax.set_title(f"{title} CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_energy(result: BenchResult, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(result.summaries)
    energy = [result.summaries[n]["energy_j"] / 1000.0 for n in names]
    fig, (ax_e, ax_s) = plt.subplots(1, 2, figsize=(12, 4.5))
    bars = ax_e.bar(names, energy, color="#1f4e79")
    for bar, name in zip(bars, names, strict=True):
        saving = result.summaries[name]["energy_saving_pct"]
        if saving is not None:
            ax_e.annotate(
                f"{saving:+.1f} %",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax_e.set_ylabel("GPU energy (kJ)")
    ax_e.set_title("Energy per policy (saving against default)")
    ax_e.tick_params(axis="x", rotation=20)
    ref = np.cumsum(np.asarray(result.runs[REFERENCE].energy_j, dtype=np.float64))
    for name, run in result.runs.items():
        if name == REFERENCE:
            continue
        own = np.cumsum(np.asarray(run.energy_j, dtype=np.float64))
        k = min(len(own), len(ref))
        t = (np.arange(k) + 1) * result.config.window_s
        with np.errstate(divide="ignore", invalid="ignore"):
            saving = np.where(ref[:k] > 0, 100.0 * (1.0 - own[:k] / ref[:k]), 0.0)
        ax_s.plot(t, saving, lw=1, label=name)
    ax_s.set_xlabel("virtual time (s)")
    ax_s.set_ylabel("cumulative saving (%)")
    ax_s.set_title("Cumulative saving against default at equal time")
    ax_s.grid(alpha=0.3)
    ax_s.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plots(result: BenchResult, out: Path) -> list[str]:
    """The PNGs, written into out; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    names = ["clock_load.png", "latency_cdf.png", "energy.png"]
    plot_clock_load(result, out / names[0])
    plot_latency_cdfs(result, out / names[1])
    plot_energy(result, out / names[2])
    return names

"""Benchmark: replay the full Azure conv 2023 trace (19,366 requests, 58 min) on one simulated
H100 SXM serving Llama 3.1 8B, in virtual time at a fixed clock; report wall time and results.

    .venv/bin/python bench/sim_replay.py [--gpu h100-sxm] [--model llama-3.1-8b]
        [--clock-mhz 1980] [--repeat 3] [--profile]

A benchmark, not a test: it prints numbers (target: under 20 s wall on a 2-core machine).
"""

from __future__ import annotations

import argparse
import cProfile
import platform
import pstats
from pathlib import Path

from sim.replay import ReplaySummary, replay_trace


def _print(s: ReplaySummary) -> None:
    print(f"wall seconds          {s.wall_s:8.2f}")
    print(f"requests completed    {s.requests_completed:8d} / {s.requests_in_trace}")
    print(f"simulated seconds     {s.simulated_s:8.1f}  ({s.steps} engine steps)")
    print(
        f"energy                {s.energy_j / 1e6:8.3f} MJ  (mean {s.mean_power_w:.0f} W per GPU)"
    )
    print(f"energy per out token  {s.j_per_output_token:8.3f} J")
    print(
        f"TTFT p50/p90/p99      {1000 * s.ttft_p50_s:6.1f} / {1000 * s.ttft_p90_s:6.1f} / "
        f"{1000 * s.ttft_p99_s:6.1f} ms"
    )
    print(
        f"TPOT p50/p90/p99      {1000 * s.tpot_p50_s:6.2f} / {1000 * s.tpot_p90_s:6.2f} / "
        f"{1000 * s.tpot_p99_s:6.2f} ms"
    )
    print(f"preemptions           {s.preemptions:8d}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gpu", default="h100-sxm")
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--clock-mhz", type=int, default=1980, help="locked SM clock (fixed)")
    ap.add_argument("--trace", type=Path, default=None, help="default: the shipped conv trace")
    ap.add_argument("--repeat", type=int, default=1, help="runs; the best wall time is reported")
    ap.add_argument("--profile", action="store_true", help="cProfile one run, top 25 by tottime")
    args = ap.parse_args(argv)
    print(f"machine: {platform.machine()}, {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.system()} {platform.release()}")  # fmt: skip
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        s = replay_trace(args.gpu, args.model, args.trace, args.clock_mhz)
        prof.disable()
        _print(s)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    runs = [
        replay_trace(args.gpu, args.model, args.trace, args.clock_mhz) for _ in range(args.repeat)
    ]
    best = min(runs, key=lambda s: s.wall_s)
    print(f"{args.model} on {args.gpu} at {args.clock_mhz} MHz, best of {args.repeat}:")
    _print(best)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

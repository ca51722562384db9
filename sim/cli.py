"""Command line of the simulator: ``agft sim ...`` calls ``main(argv)``.

sweep      step time, power and energy per token against SM clock for steady loads
replay     replay a trace in virtual time on one instance and print the summary
calibrate  measure every calibration anchor, print measured vs target (docs/SIMULATOR.md)
profiles   list the GPU and model profiles
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from sim.profiles import gpu_profile_names, model_profile_names
    from sim.sweep import LOADS

    p = argparse.ArgumentParser(prog="agft sim", description="Simulated GPU serving node tools.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "sweep",
        help="steady loads against SM clock: table (CSV, Markdown) and figure (PNG)",
        description="Measure step time, power and energy per token against the locked SM clock "
        "for prefill-heavy, decode-heavy and mixed steady loads.",
    )
    s.add_argument("--gpu", required=True, choices=gpu_profile_names())
    s.add_argument("--model", required=True, choices=model_profile_names())
    s.add_argument("--out", required=True, type=Path, help="output directory (created)")
    s.add_argument(
        "--loads", default=",".join(LOADS), help=f"comma-separated subset of {','.join(LOADS)}"
    )
    s.add_argument(
        "--clocks",
        default=None,
        help="comma-separated SM clocks in MHz (default: every 4th supported clock)",
    )
    s.add_argument("--window", type=float, default=10.0, help="measured seconds per point")

    r = sub.add_parser("replay", help="replay a trace in virtual time and summarise")
    r.add_argument("--gpu", default="h100-sxm", choices=gpu_profile_names())
    r.add_argument("--model", default="llama-3.1-8b", choices=model_profile_names())
    r.add_argument("--trace", type=Path, default=None, help="Azure-format CSV (default: shipped)")
    r.add_argument("--clock-mhz", type=int, default=None, help="lock every GPU at this clock")
    r.add_argument("--rate-scale", type=float, default=1.0)

    sub.add_parser("profiles", help="list GPU and model profiles")
    sub.add_parser(
        "calibrate",
        help="measure every calibration anchor and print a Markdown table (measured vs target)",
    )
    return p


def _sweep(args: argparse.Namespace) -> int:
    from sim.profiles import gpu_profile
    from sim.report import write_csv, write_markdown, write_png
    from sim.sweep import LOADS, sweep

    loads = [x.strip() for x in args.loads.split(",") if x.strip()]
    unknown = [x for x in loads if x not in LOADS]
    if unknown:
        print(f"unknown load(s) {unknown}; choose from {list(LOADS)}", file=sys.stderr)
        return 2
    clocks = None
    if args.clocks:
        grid = set(gpu_profile(args.gpu).supported_sm_clocks_mhz())
        clocks = sorted(int(x) for x in args.clocks.split(","))
        bad = [c for c in clocks if c not in grid]
        if bad:
            print(f"clock(s) {bad} not supported by {args.gpu}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    points = sweep(args.gpu, args.model, loads, clocks, window_s=args.window)
    # Not Path.with_suffix: model names like llama-3.1-8b contain dots.
    stem = f"sweep_{args.gpu}_{args.model}"
    paths = [args.out / f"{stem}.{ext}" for ext in ("csv", "md", "png")]
    write_csv(points, paths[0])
    write_markdown(points, paths[1])
    write_png(points, paths[2])
    took = time.perf_counter() - t
    print(f"{len(points)} points in {took:.1f} s -> {', '.join(map(str, paths))}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from sim.replay import replay_trace

    s = replay_trace(args.gpu, args.model, args.trace, args.clock_mhz, args.rate_scale)
    for k, v in s.as_dict().items():
        print(f"{k:>24}: {v}")
    return 0


def _profiles() -> int:
    from sim.profiles import gpu_profile, gpu_profile_names, model_profile, model_profile_names

    for g in gpu_profile_names():
        p = gpu_profile(g)
        print(
            f"gpu   {g:<10} {p.nvml_name:<24} {p.sm_clock_min_mhz}-{p.sm_clock_max_mhz} MHz "
            f"TDP {p.tdp_w:.0f} W idle {p.idle_w:.0f} W"
        )
    for m in model_profile_names():
        mp = model_profile(m)
        print(f"model {m:<14} {mp.hf_id:<34} TP{mp.tensor_parallel}")
    return 0


def _calibrate() -> int:
    from sim.calibration import calibration_report

    checks = calibration_report()
    print("| check | measured | target | ok |")
    print("|---|---:|---|---|")
    for c in checks:
        print(f"| {c.name} | {c.measured:.3f} | {c.target} | {'yes' if c.ok else 'NO'} |")
    return 0 if all(c.ok for c in checks) else 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sweep":
        return _sweep(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "calibrate":
        return _calibrate()
    return _profiles()


if __name__ == "__main__":
    raise SystemExit(main())

"""Command line of the benchmark: ``agft bench ...`` calls ``main(argv)``."""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable
from pathlib import Path

from bench.front_door import split_name
from bench.plan import DEFAULT_ATTAINMENT_SLACK
from bench.plots import write_plots
from bench.report import write_results
from bench.runner import BENCH_ONLY, BenchConfig, policy_for, prepare, run_bench
from server.control.policy import SloTargets
from server.control.registry import POLICY_NAMES
from sim.profiles import gpu_profile_names, model_profile_names
from sim.workload import TraceFormatError, shipped_trace_path

__all__ = ["main"]

DEFAULT_POLICIES = "default,rule,agft,agft-paper,best-static"
_SLO = SloTargets()


class BenchUsageError(Exception):
    """Bad options or input files: reported on stderr with exit status 2."""


def _positive(kind: type[float] | type[int]) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agft bench",
        description="Run clock policies over a request trace on the simulated GPU serving "
        "node, in virtual time, through the agent's measurement code and the server's "
        "decision code. Writes results.md, results.json and PNG plots.",
    )
    p.add_argument(
        "--trace",
        type=Path,
        default=None,
        help="request trace, Azure LLM inference CSV (TIMESTAMP,ContextTokens,GeneratedTokens), "
        "plain or .gz (default: the shipped Azure conv 2023 trace)",
    )
    p.add_argument("--gpu", default="h100-sxm", choices=gpu_profile_names())
    p.add_argument("--model", default="llama-3.1-8b", choices=model_profile_names())
    load = p.add_mutually_exclusive_group()
    load.add_argument(
        "--rate-scale",
        type=_positive(float),
        default=None,
        help="multiply the trace's request rate (default 1)",
    )
    load.add_argument(
        "--peak-load",
        type=_positive(float),
        default=None,
        help="scale the trace so its busiest minute reaches this fraction of the instance's "
        "capacity at max clock (e.g. 0.85; see docs/BENCHMARK.md)",
    )
    p.add_argument("--slo-ttft", type=_positive(float), default=_SLO.ttft_s, help="seconds, p90")
    p.add_argument("--slo-tpot", type=_positive(float), default=_SLO.tpot_s, help="seconds, p90")
    p.add_argument(
        "--policies",
        default=DEFAULT_POLICIES,
        help="comma-separated: agft, agft-paper, static, default, rule, best-static, oracle, "
        "oracle-plan, state-plan (a state-to-clock map trained on the next seed's arrivals); "
        "agft:NAME=VALUE:... is agft with tunables overridden, e.g. "
        "agft:miss_share_factor=0.5 "
        f"(default {DEFAULT_POLICIES}; default always runs, as the reference)",
    )
    p.add_argument("--static-clock-mhz", type=_positive(int), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="output directory")
    p.add_argument("--window-s", type=_positive(float), default=1.0)
    p.add_argument(
        "--duration-s", type=_positive(float), default=None, help="use the first N s of the trace"
    )
    p.add_argument(
        "--drain-s",
        type=float,
        default=120.0,
        help="virtual time after the last arrival, for the last requests to finish",
    )
    p.add_argument(
        "--static-step-mhz", type=_positive(int), default=90, help="best-static clock grid step"
    )
    p.add_argument("--oracle-step-mhz", type=_positive(int), default=90)
    p.add_argument(
        "--min-clock-fraction",
        type=_positive(float),
        default=0.4,
        help="lowest clock best-static and oracle try, as a fraction of f_max",
    )
    p.add_argument(
        "--oracle-slowdown",
        type=float,
        default=0.10,
        help="oracle latency budget: p90 at most (1 + this) x default's, and within the SLO",
    )
    p.add_argument(
        "--oracle-attainment-slack",
        type=float,
        default=100.0 * DEFAULT_ATTAINMENT_SLACK,
        help="oracle-plan's SLO attainment promise: at most this many points below default's "
        "(0 asks for default's attainment)",
    )
    p.add_argument("--oracle-lookahead", type=int, default=2, help="windows at default clocks")
    p.add_argument(
        "--plan-step-mhz",
        type=_positive(int),
        default=180,
        help="oracle-plan's clock grid step (its table's columns)",
    )
    p.add_argument(
        "--plan-lookahead",
        type=int,
        default=1,
        help="windows at default clocks after each of oracle-plan's table cells",
    )
    p.add_argument(
        "--oracle-budget",
        choices=("cumulative", "window"),
        default="cumulative",
        help="the oracle's p90 per window: over the run so far (default), or over that "
        "window alone",
    )
    p.add_argument(
        "--jobs",
        type=_positive(int),
        default=min(2, os.cpu_count() or 1),
        help="worker processes for independent runs (same numbers with any count; "
        "default: 2, or 1 on a single CPU)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _policies(text: str, static_clock_mhz: int | None) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise BenchUsageError("--policies names no policy")
    known = (*POLICY_NAMES, *BENCH_ONLY)
    # `agft:name=value:...` is agft with tunables overridden (checked when built);
    # `NAME+load` / `NAME+router` runs NAME with the agent's fast loop on that front door.
    unknown = []
    for n in names:
        try:
            base, front_door = split_name(n)
        except ValueError as err:
            raise BenchUsageError(str(err)) from None
        if front_door is not None and base in BENCH_ONLY:
            raise BenchUsageError(f"{n}: {base} is a yardstick; it has no front door")
        if base not in known and not base.startswith("agft:"):
            unknown.append(n)
    if unknown:
        raise BenchUsageError(f"unknown policies {unknown}; known: {', '.join(known)}")
    if "static" in names and static_clock_mhz is None:
        raise BenchUsageError("policy static needs --static-clock-mhz")
    return names


def _config(args: argparse.Namespace) -> BenchConfig:
    if args.drain_s < 0:
        raise BenchUsageError("--drain-s must not be negative")
    if args.oracle_lookahead < 0:
        raise BenchUsageError("--oracle-lookahead must not be negative")
    if args.plan_lookahead < 0:
        raise BenchUsageError("--plan-lookahead must not be negative")
    if args.oracle_slowdown < 0:
        raise BenchUsageError("--oracle-slowdown must not be negative")
    if not 0 <= args.oracle_attainment_slack <= 100:
        raise BenchUsageError("--oracle-attainment-slack must be 0-100 points")
    if args.min_clock_fraction > 1:
        raise BenchUsageError("--min-clock-fraction must be at most 1")
    trace = args.trace if args.trace is not None else shipped_trace_path("azure_conv_2023")
    if not trace.is_file():
        raise BenchUsageError(f"no trace file {trace}")
    return BenchConfig(
        trace=trace,
        gpu=args.gpu,
        model=args.model,
        rate_scale=args.rate_scale,
        peak_load=args.peak_load,
        slo=SloTargets(ttft_s=args.slo_ttft, tpot_s=args.slo_tpot),
        policies=_policies(args.policies, args.static_clock_mhz),
        static_clock_mhz=args.static_clock_mhz,
        seed=args.seed,
        window_s=args.window_s,
        duration_s=args.duration_s,
        drain_s=args.drain_s,
        min_clock_fraction=args.min_clock_fraction,
        static_step_mhz=args.static_step_mhz,
        oracle_step_mhz=args.oracle_step_mhz,
        oracle_slowdown=args.oracle_slowdown,
        oracle_attainment_slack=args.oracle_attainment_slack / 100.0,
        oracle_lookahead=args.oracle_lookahead,
        plan_step_mhz=args.plan_step_mhz,
        plan_lookahead=args.plan_lookahead,
        oracle_budget=args.oracle_budget,
    )


def _check_policies(config: BenchConfig) -> None:
    """Build each server policy once now, so a missing one fails before any simulation."""
    for name in config.policies:
        if name in BENCH_ONLY:
            continue
        try:
            policy_for(name, config)
        except ImportError as err:
            raise BenchUsageError(f"policy {name} is not available: {err}") from None
        except ValueError as err:
            raise BenchUsageError(f"policy {name}: {err}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    err = io.StringIO() if args.quiet else sys.stderr
    try:
        config = _config(args)
        _check_policies(config)
        # ValueError here means input the trace reveals as unusable (e.g. a --duration-s
        # shorter than its first gap), not a bug: say so and stop.
        workload = prepare(config, err)
    except (BenchUsageError, TraceFormatError, FileNotFoundError, ValueError) as error:
        print(f"agft bench: error: {error}", file=sys.stderr)
        return 2
    result = run_bench(config, workload, err, jobs=args.jobs)
    plots = [] if args.no_plots else write_plots(result, args.out)
    data = write_results(result, args.out, plots)
    for name, entry in data["policies"].items():
        saving = entry["energy_saving_pct"]
        print(
            f"{name:>12}: energy {entry['energy_j'] / 1000:9.1f} kJ"
            f"  saving {saving:+6.1f} %  SLO met {100 * entry['slo_attainment']:6.2f} %"
            if saving is not None and entry["slo_attainment"] is not None
            else f"{name:>12}: energy {entry['energy_j'] / 1000:9.1f} kJ"
        )
    print(f"results in {args.out / 'results.md'}, {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

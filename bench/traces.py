"""Request traces the controller was not tuned on, in the Azure CSV schema.

The shipped traces (Azure conv and code 2023) are what agft's defaults were measured on;
a promise that holds only there is not a promise. These generators write other shapes of
traffic in the same schema (TIMESTAMP,ContextTokens,GeneratedTokens), so `agft bench
--trace` and the load sweep read them like any Azure trace:

- chat: multi-turn conversations. Sessions start as a Poisson process; each has a
  geometric number of turns (mean 4); a turn's new prompt and its answer are drawn from
  the shipped ShareGPT length pairs, and its context is the whole conversation so far
  (capped at 8,192 tokens); the next turn comes after the answer would have streamed at
  20 ms a token plus an exponential think time (mean 20 s).
- summarise: long prompts with short answers in bursts. Gamma arrivals with a coefficient
  of variation of 3; prompts log-normal around 3,000 tokens (1,000-8,000), answers
  uniform 100-400 tokens.
- poisson: single requests, Poisson arrivals, ShareGPT lengths.

The absolute rate does not matter to `agft bench --peak-load`, which rescales a trace to a
share of the GPU's capacity; it only sets how many requests the file holds.

    python -m bench.traces chat --seed 0 --out traces/chat.csv.gz
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from sim.workload import LengthDistribution, shipped_lengths_path

KINDS = ("chat", "summarise", "poisson")
_EPOCH = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)
_MAX_CONTEXT = 8_192


def chat(rng: np.random.Generator, duration_s: float, rate: float) -> list[tuple[float, int, int]]:
    lengths = LengthDistribution.from_csv(shipped_lengths_path())
    rows: list[tuple[float, int, int]] = []
    sessions_per_s = rate / 4.0  # four turns a session on average
    t = 0.0
    while True:
        t += float(rng.exponential(1.0 / sessions_per_s))
        if t >= duration_s:
            break
        turns = int(rng.geometric(0.25))
        prompts, outputs = lengths.sample(rng, turns)
        at, context = t, 0
        for prompt, output in zip(prompts, outputs, strict=True):
            if at >= duration_s:
                break
            context = min(_MAX_CONTEXT, context + prompt)
            rows.append((at, context, output))
            context = min(_MAX_CONTEXT, context + output)
            at += 0.02 * output + float(rng.exponential(20.0))
    return sorted(rows)


def summarise(
    rng: np.random.Generator, duration_s: float, rate: float
) -> list[tuple[float, int, int]]:
    cv = 3.0
    shape = 1.0 / (cv * cv)
    rows: list[tuple[float, int, int]] = []
    t = 0.0
    while True:
        t += float(rng.gamma(shape, 1.0 / (rate * shape)))
        if t >= duration_s:
            break
        prompt = int(np.clip(rng.lognormal(np.log(3_000.0), 0.5), 1_000, 8_000))
        rows.append((t, prompt, int(rng.integers(100, 401))))
    return rows


def poisson(
    rng: np.random.Generator, duration_s: float, rate: float
) -> list[tuple[float, int, int]]:
    lengths = LengthDistribution.from_csv(shipped_lengths_path())
    n = int(rng.poisson(rate * duration_s))
    times = np.sort(rng.uniform(0.0, duration_s, size=n))
    prompts, outputs = lengths.sample(rng, n)
    return [(float(t), p, o) for t, p, o in zip(times, prompts, outputs, strict=True)]


def generate(kind: str, seed: int, duration_s: float, rate: float) -> list[tuple[float, int, int]]:
    rng = np.random.default_rng(seed)
    makers = {"chat": chat, "summarise": summarise, "poisson": poisson}
    if kind not in makers:
        raise ValueError(f"unknown trace kind {kind!r}; known: {', '.join(KINDS)}")
    return makers[kind](rng, duration_s, rate)


def write_azure_csv(rows: Sequence[tuple[float, int, int]], path: Path) -> None:
    """TIMESTAMP,ContextTokens,GeneratedTokens with Azure 2023's 7 fractional digits."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow(("TIMESTAMP", "ContextTokens", "GeneratedTokens"))
    for t, prompt, output in rows:
        stamp = _EPOCH + timedelta(seconds=t)
        out.writerow((stamp.strftime("%Y-%m-%d %H:%M:%S.%f") + "0", max(1, prompt), max(1, output)))
    data = buf.getvalue().encode()
    if path.suffix == ".gz":
        # No time and no file name in the header: the same seed writes the same bytes.
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.traces", description=__doc__)
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds")
    parser.add_argument("--rate", type=float, default=5.0, help="requests/s before rescaling")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = generate(args.kind, args.seed, args.duration, args.rate)
    write_azure_csv(rows, args.out)
    print(f"{len(rows)} requests in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Request arrivals: Azure trace replay and synthetic generators (Poisson, Gamma, diurnal).

A ``Workload`` hands out one ``ArrivalStream`` per serving instance. Rates are for the whole
node: a trace is split round-robin between instances and a synthetic rate is divided by the
number of instances, so adding instances spreads the same load instead of multiplying it.
Streams are lazy (generated in chunks), seeded, and may be infinite.
"""

from __future__ import annotations

import abc
import bisect
import calendar
import csv
import gzip
import io
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

__all__ = [
    "ArrivalStream",
    "DiurnalWorkload",
    "FixedLengths",
    "GammaWorkload",
    "LengthDistribution",
    "LengthSampler",
    "NoWorkload",
    "PoissonWorkload",
    "TraceFormatError",
    "TraceWorkload",
    "Workload",
    "parse_timestamp",
    "shipped_lengths_path",
    "shipped_trace_path",
]

_DATA = Path(__file__).resolve().parent / "data"
_CHUNK = 2048

Chunk = tuple[list[float], list[int], list[int]]


class TraceFormatError(ValueError):
    """A trace or length file that cannot be read; the message names the file and line."""


# ---- shipped data ---------------------------------------------------------------------
def shipped_trace_path(name: str = "azure_conv_2023") -> Path:
    """Path of a trace shipped in sim/data/traces (see sim/data/README.md)."""
    for suffix in (".csv.gz", ".csv"):
        p = _DATA / "traces" / f"{name}{suffix}"
        if p.is_file():
            return p
    known = sorted(p.name.split(".")[0] for p in (_DATA / "traces").iterdir())
    raise FileNotFoundError(f"no shipped trace {name!r}; shipped: {known}")


def shipped_lengths_path(name: str = "sharegpt_v3_llama31") -> Path:
    """Path of a request-length file shipped in sim/data/lengths."""
    p = _DATA / "lengths" / f"{name}.csv"
    if not p.is_file():
        raise FileNotFoundError(f"no shipped length file {name!r}")
    return p


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


# ---- timestamps -----------------------------------------------------------------------
_TS = re.compile(
    r"^\s*(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?\s*$"
)


def _header(
    reader: Iterator[list[str]], path: Path, names: tuple[str, ...], expected: str
) -> tuple[list[str], list[int]]:
    """Read a CSV header: its stripped column names and the index of each wanted name.
    An empty file or a missing name is a TraceFormatError naming the file (and line 1)."""
    header = next(reader, None)
    if header is None:
        raise TraceFormatError(f"{path}: empty file")
    cols = [h.strip() for h in header]
    try:
        return cols, [cols.index(name) for name in names]
    except ValueError:
        raise TraceFormatError(f"{path}:1: {expected}, got {header}") from None


def parse_timestamp(text: str) -> float:
    """Seconds since the Unix epoch of an Azure trace timestamp.

    Accepts the 2023 form with 7 fractional digits (``2023-11-16 18:17:03.9799600``) and the
    2024 forms with or without a UTC offset and fraction (``2024-05-12 00:00:00+00:00``,
    ``2024-05-12 00:00:01.250000+00:00``). Naive timestamps are taken as UTC.
    """
    m = _TS.match(text)
    if m is None:
        raise ValueError(f"not a timestamp: {text!r}")
    y, mo, d, hh, mm, ss = (int(m.group(i)) for i in range(1, 7))
    frac = float("0." + m.group(7)) if m.group(7) else 0.0
    secs = calendar.timegm((y, mo, d, hh, mm, ss, 0, 0, 0)) + frac
    tz = m.group(8)
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        digits = tz[1:].replace(":", "")
        secs -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return float(secs)


# ---- streams --------------------------------------------------------------------------
class ArrivalStream:
    """One instance's arrivals in time order; seconds relative to the stream's start.

    ``next_t`` is the time of the next arrival (``inf`` when the stream has ended); the
    engine reads it directly on its hot path.
    """

    __slots__ = ("_ended", "_i", "_o", "_p", "_refill", "_t", "next_t")

    def __init__(self, refill: Callable[[], Chunk | None]) -> None:
        self._refill = refill
        self._t: list[float] = []
        self._p: list[int] = []
        self._o: list[int] = []
        self._i = 0
        self._ended = False
        self.next_t = math.inf
        self._load()

    def _next_chunk(self) -> Chunk | None:
        # A refill that said "no more" is not asked again.
        if self._ended:
            return None
        chunk = self._refill()
        if chunk is None:
            self._ended = True
        return chunk

    def pending_through(self, t: float) -> int:
        """Arrivals not popped yet whose time is at most t: requests a front door (the API
        server, a router) already holds while the engine has not scheduled since. Reads
        chunks ahead as needed; what pop() returns does not change."""
        while self._t and self._t[-1] <= t:
            chunk = self._next_chunk()
            if chunk is None:
                break
            if chunk[0]:
                i = self._i
                self._t = self._t[i:] + chunk[0]
                self._p = self._p[i:] + chunk[1]
                self._o = self._o[i:] + chunk[2]
                self._i = 0
        return bisect.bisect_right(self._t, t, lo=self._i) - self._i

    def _load(self) -> None:
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                self._t, self._p, self._o, self._i = [], [], [], 0
                self.next_t = math.inf
                return
            if chunk[0]:
                self._t, self._p, self._o = chunk
                self._i = 0
                self.next_t = self._t[0]
                return

    def pop(self) -> tuple[float, int, int]:
        """The next arrival as (time, prompt tokens, output tokens)."""
        i = self._i
        if i >= len(self._t):
            raise IndexError("stream exhausted")
        out = (self._t[i], self._p[i], self._o[i])
        i += 1
        self._i = i
        if i < len(self._t):
            self.next_t = self._t[i]
        else:
            self._load()
        return out

    def __iter__(self) -> Iterator[tuple[float, int, int]]:
        while self.next_t != math.inf:
            yield self.pop()


class Workload(abc.ABC):
    """A source of request arrivals for a node."""

    @abc.abstractmethod
    def streams(self, n: int, seed: int) -> list[ArrivalStream]:
        """One stream per serving instance, deterministic in ``seed``."""


class NoWorkload(Workload):
    """No requests at all (an idle node; sweeps inject their own load)."""

    def streams(self, n: int, seed: int) -> list[ArrivalStream]:
        return [ArrivalStream(lambda: None) for _ in range(n)]


# ---- lengths --------------------------------------------------------------------------
class LengthSampler(abc.ABC):
    @abc.abstractmethod
    def sample(self, rng: np.random.Generator, k: int) -> tuple[list[int], list[int]]:
        """k (prompt, output) token counts."""


@dataclass(frozen=True, slots=True)
class FixedLengths(LengthSampler):
    prompt_tokens: int
    output_tokens: int

    def sample(self, rng: np.random.Generator, k: int) -> tuple[list[int], list[int]]:
        return [self.prompt_tokens] * k, [self.output_tokens] * k


class LengthDistribution(LengthSampler):
    """Empirical (prompt, output) pairs, e.g. ShareGPT first turns; sampled with replacement."""

    def __init__(self, prompts: list[int], outputs: list[int]) -> None:
        if not prompts or len(prompts) != len(outputs):
            raise ValueError("need a non-empty, equal number of prompt and output lengths")
        self._p = np.asarray(prompts, dtype=np.int64)
        self._o = np.asarray(outputs, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._p)

    @property
    def mean_prompt_tokens(self) -> float:
        return float(self._p.mean())

    @property
    def mean_output_tokens(self) -> float:
        return float(self._o.mean())

    @classmethod
    def from_csv(cls, path: str | Path) -> LengthDistribution:
        """Read ``num_prefill_tokens,num_decode_tokens`` rows (Vidur's processed-trace schema)."""
        path = Path(path)
        prompts: list[int] = []
        outputs: list[int] = []
        with _open_text(path) as fh:
            reader = csv.reader(fh)
            _, (ip, io_) = _header(
                reader,
                path,
                ("num_prefill_tokens", "num_decode_tokens"),
                "header must name num_prefill_tokens and num_decode_tokens",
            )
            for lineno, row in enumerate(reader, start=2):
                if not row:
                    continue
                try:
                    p, o = int(row[ip]), int(row[io_])
                except (ValueError, IndexError):
                    raise TraceFormatError(f"{path}:{lineno}: bad row {row}") from None
                if p < 0 or o < 0:
                    raise TraceFormatError(f"{path}:{lineno}: negative token count in {row}")
                prompts.append(max(1, p))
                outputs.append(max(1, o))
        if not prompts:
            raise TraceFormatError(f"{path}: no rows")
        return cls(prompts, outputs)

    @classmethod
    def shipped(cls, name: str = "sharegpt_v3_llama31") -> LengthDistribution:
        return cls.from_csv(shipped_lengths_path(name))

    def sample(self, rng: np.random.Generator, k: int) -> tuple[list[int], list[int]]:
        idx = rng.integers(0, len(self._p), size=k)
        return self._p[idx].tolist(), self._o[idx].tolist()


# ---- trace replay -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TraceRows:
    """A parsed trace: arrival offsets from the first row (s) and token counts."""

    t: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    start_epoch_s: float

    @property
    def span_s(self) -> float:
        return float(self.t[-1]) if len(self.t) else 0.0


def read_trace_csv(path: str | Path) -> TraceRows:
    """Read an Azure LLM inference trace (``TIMESTAMP,ContextTokens,GeneratedTokens``)."""
    path = Path(path)
    times: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        cols, (it, ip, io_) = _header(
            reader,
            path,
            ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
            "header must be TIMESTAMP,ContextTokens,GeneratedTokens",
        )
        for lineno, row in enumerate(reader, start=2):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(cols):
                raise TraceFormatError(
                    f"{path}:{lineno}: expected {len(cols)} columns, got {len(row)}: {row}"
                )
            try:
                ts = parse_timestamp(row[it])
            except ValueError:
                raise TraceFormatError(f"{path}:{lineno}: bad timestamp {row[it]!r}") from None
            try:
                p, o = int(row[ip]), int(row[io_])
            except ValueError:
                raise TraceFormatError(f"{path}:{lineno}: bad token count in {row}") from None
            if p < 0 or o < 0:
                raise TraceFormatError(f"{path}:{lineno}: negative token count in {row}")
            times.append(ts)
            # vLLM needs at least one prompt token and max_tokens >= 1.
            prompts.append(max(1, p))
            outputs.append(max(1, o))
    if not times:
        raise TraceFormatError(f"{path}: no rows")
    t = np.asarray(times, dtype=np.float64)
    order = np.argsort(t, kind="stable")  # the 2024 traces are sorted; be safe anyway
    t = t[order]
    start = float(t[0])
    return TraceRows(
        t=t - start,
        prompt=np.asarray(prompts, dtype=np.int64)[order],
        output=np.asarray(outputs, dtype=np.int64)[order],
        start_epoch_s=start,
    )


def ramp_end_s(t: np.ndarray, window_s: float = 60.0, level: float = 0.8) -> float:
    """First whole second where the trailing-window arrival rate reaches ``level`` x the mean."""
    if len(t) < 2 or t[-1] <= window_s:
        return 0.0
    mean_rate = len(t) / float(t[-1])
    ends = np.arange(window_s, float(t[-1]), 1.0)
    counts = np.searchsorted(t, ends, side="right") - np.searchsorted(t, ends - window_s)
    hit = np.nonzero(counts / window_s >= level * mean_rate)[0]
    return float(ends[hit[0]]) if len(hit) else 0.0


class TraceWorkload(Workload):
    """Replays a trace, split round-robin over the node's instances.

    rate_scale: requests per unit time multiplier that keeps the trace's timing shape: < 1
      drops a seeded random share of rows, > 1 adds jittered copies of rows;
    time_scale: stretches the trace clock (2.0 plays it at half speed);
    loop: start over after the last row (period = span + mean gap), forever;
    start_offset_s: begin this far into the trace (the first pass only); "auto" skips the
      opening ramp-up, to the first second where the trailing-minute rate reaches 80 % of the
      trace's mean rate (88 s into the Azure conv 2023 trace), so a live demo starts loaded.
    """

    def __init__(
        self,
        rows: TraceRows,
        rate_scale: float = 1.0,
        time_scale: float = 1.0,
        loop: bool = True,
        start_offset_s: float | Literal["auto"] = "auto",
    ) -> None:
        if rate_scale <= 0 or time_scale <= 0:
            raise ValueError("rate_scale and time_scale must be positive")
        if start_offset_s == "auto":
            start_offset_s = ramp_end_s(rows.t)
        if not 0 <= start_offset_s < max(rows.span_s, 1e-9) + 1e-9:
            raise ValueError(f"start_offset_s must be within the trace span ({rows.span_s:.0f} s)")
        self.rows = rows
        self.rate_scale = rate_scale
        self.time_scale = time_scale
        self.loop = loop
        self.start_offset_s = start_offset_s

    @classmethod
    def from_csv(
        cls,
        path: str | Path,
        rate_scale: float = 1.0,
        time_scale: float = 1.0,
        loop: bool = True,
        start_offset_s: float | Literal["auto"] = "auto",
    ) -> TraceWorkload:
        return cls(read_trace_csv(path), rate_scale, time_scale, loop, start_offset_s)

    @classmethod
    def shipped(
        cls,
        name: str = "azure_conv_2023",
        rate_scale: float = 1.0,
        time_scale: float = 1.0,
        loop: bool = True,
        start_offset_s: float | Literal["auto"] = "auto",
    ) -> TraceWorkload:
        """A trace shipped with the simulator (see sim/data/README.md)."""
        return cls.from_csv(shipped_trace_path(name), rate_scale, time_scale, loop, start_offset_s)

    @property
    def num_requests(self) -> int:
        return len(self.rows.t)

    @property
    def mean_gap_s(self) -> float:
        n = len(self.rows.t)
        return self.rows.span_s / (n - 1) if n > 1 else 1.0

    @property
    def period_s(self) -> float:
        """Length of one pass in stream time (before the next loop starts)."""
        return (self.rows.span_s + self.mean_gap_s) * self.time_scale

    def _pass(self, k: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All rows of pass k (node-wide), in stream time."""
        r = self.rows
        t, p, o = r.t, r.prompt, r.output
        if k == 0 and self.start_offset_s > 0:
            keep = t >= self.start_offset_s
            t, p, o = t[keep] - self.start_offset_s, p[keep], o[keep]
            shift = 0.0
        else:
            first = (r.span_s + self.mean_gap_s - self.start_offset_s) if k > 0 else 0.0
            shift = first + (k - 1) * (r.span_s + self.mean_gap_s) if k > 0 else 0.0
        if self.rate_scale != 1.0:
            rng = np.random.default_rng([seed, k, 0x7A])
            whole = math.floor(self.rate_scale)
            copies = whole + (rng.random(len(t)) < self.rate_scale - whole)
            t, p, o = np.repeat(t, copies), np.repeat(p, copies), np.repeat(o, copies)
            # Copies after the first of a row land within one mean gap of it.
            starts = np.cumsum(copies) - copies
            first_copy = np.zeros(len(t), dtype=bool)
            first_copy[starts[copies > 0]] = True
            jitter = rng.random(len(t)) * self.mean_gap_s
            t = t + np.where(first_copy, 0.0, jitter)
            order = np.argsort(t, kind="stable")
            t, p, o = t[order], p[order], o[order]
        return (t + shift) * self.time_scale, p, o

    def streams(self, n: int, seed: int) -> list[ArrivalStream]:
        if n < 1:
            raise ValueError("need at least one stream")
        out: list[ArrivalStream] = []
        for i in range(n):
            state = {"k": 0}

            def refill(i: int = i, state: dict[str, int] = state) -> Chunk | None:
                k = state["k"]
                if k > 0 and not self.loop:
                    return None
                state["k"] = k + 1
                t, p, o = self._pass(k, seed)
                return t[i::n].tolist(), p[i::n].tolist(), o[i::n].tolist()

            out.append(ArrivalStream(refill))
        return out


# ---- synthetic arrivals ----------------------------------------------------------------
class _SyntheticWorkload(Workload):
    def __init__(
        self, rate_per_s: float, lengths: LengthSampler, duration_s: float | None = None
    ) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.rate_per_s = rate_per_s
        self.lengths = lengths
        self.duration_s = duration_s

    @abc.abstractmethod
    def _gaps(self, rng: np.random.Generator, rate: float, t0: float, k: int) -> np.ndarray:
        """k inter-arrival gaps for one stream of the given rate, starting at time t0."""

    def streams(self, n: int, seed: int) -> list[ArrivalStream]:
        if n < 1:
            raise ValueError("need at least one stream")
        children = np.random.SeedSequence(seed).spawn(n)
        rate = self.rate_per_s / n
        out: list[ArrivalStream] = []
        for child in children:
            rng = np.random.default_rng(child)
            state = {"t": 0.0}

            def refill(
                rng: np.random.Generator = rng, state: dict[str, float] = state
            ) -> Chunk | None:
                t0 = state["t"]
                if self.duration_s is not None and t0 >= self.duration_s:
                    return None
                times = t0 + np.cumsum(self._gaps(rng, rate, t0, _CHUNK))
                state["t"] = float(times[-1])
                if self.duration_s is not None:
                    times = times[times < self.duration_s]
                p, o = self.lengths.sample(rng, len(times))
                return times.tolist(), p, o

            out.append(ArrivalStream(refill))
        return out


class PoissonWorkload(_SyntheticWorkload):
    """Poisson arrivals at ``rate_per_s`` requests/s for the whole node."""

    def _gaps(self, rng: np.random.Generator, rate: float, t0: float, k: int) -> np.ndarray:
        return rng.exponential(1.0 / rate, size=k)


class GammaWorkload(_SyntheticWorkload):
    """Renewal process with Gamma gaps: coefficient of variation ``cv`` > 1 gives bursts."""

    def __init__(
        self,
        rate_per_s: float,
        lengths: LengthSampler,
        cv: float = 2.0,
        duration_s: float | None = None,
    ) -> None:
        super().__init__(rate_per_s, lengths, duration_s)
        if cv <= 0:
            raise ValueError("cv must be positive")
        self.cv = cv

    def _gaps(self, rng: np.random.Generator, rate: float, t0: float, k: int) -> np.ndarray:
        shape = 1.0 / (self.cv * self.cv)
        return rng.gamma(shape, 1.0 / (rate * shape), size=k)


class DiurnalWorkload(_SyntheticWorkload):
    """Poisson arrivals whose rate swings sinusoidally: mean x (1 + amplitude sin(2 pi t / P)).

    Generated by thinning a Poisson process at the peak rate, so the gaps are exact.
    """

    def __init__(
        self,
        rate_per_s: float,
        lengths: LengthSampler,
        amplitude: float = 0.5,
        period_s: float = 86400.0,
        phase: float = 0.0,
        duration_s: float | None = None,
    ) -> None:
        super().__init__(rate_per_s, lengths, duration_s)
        if not 0 <= amplitude < 1:
            raise ValueError("amplitude must be in [0, 1)")
        self.amplitude = amplitude
        self.period_s = period_s
        self.phase = phase

    def rate_at(self, t: float, rate: float) -> float:
        return rate * (1 + self.amplitude * math.sin(2 * math.pi * t / self.period_s + self.phase))

    def _gaps(self, rng: np.random.Generator, rate: float, t0: float, k: int) -> np.ndarray:
        peak = rate * (1 + self.amplitude)
        out = np.empty(k)
        t = t0
        last = t0
        n = 0
        while n < k:
            cand = t + np.cumsum(rng.exponential(1.0 / peak, size=2 * (k - n)))
            lam = rate * (
                1 + self.amplitude * np.sin(2 * np.pi * cand / self.period_s + self.phase)
            )
            kept = cand[rng.random(len(cand)) * peak < lam][: k - n]
            if len(kept):
                out[n : n + len(kept)] = np.diff(np.concatenate(([last], kept)))
                last = float(kept[-1])
                n += len(kept)
            t = float(cand[-1])
        return out

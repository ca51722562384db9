"""agft's first-token promises, held on counts of requests rather than on quantiles.

The admin promises two things about first tokens against default clocks: the p-th
percentile at most (1 + slowdown) x default's, and at most a few points of SLO attainment
given up. Both are statements about requests over a whole period, so they are held here
as counts of requests, window by window:

* `PooledLatencies` pools every window's TTFT histogram, each scaled by the latency
  model's speedup to the max clock, into one decayed histogram on a fine log grid: the
  requests as default clocks would have given them. Its quantile is a request-level
  estimate of default's percentile (the earlier reference was a percentile of per-window
  percentiles, a different statistic whose ratio did not track the requests').
* `CountedShare` is integral control on a count: each window adds the requests it let
  over a line and takes back the share the promise allows; the gain it steers is the
  exponential of that running debt. Its long-run share over the line therefore converges
  to the allowed share whenever the tightest gain would keep it there, and a burst's debt
  is paid back later, as a promise over the whole period needs. The quantile-ratio
  integrator it replaces measured over 900 windows of lag and was still falling at the
  end of an hour that broke the promise (conv 2023, 70 % peak: +12 % p90 TTFT).

Inside a bucket, counts follow the pooled tail's shape (a power law between the bucket's
bounds), not an even spread: see shaped_cdf.
"""

from __future__ import annotations

import bisect
import itertools
import math
from typing import Any

import numpy as np

from server.control.agft.models import FloatArray
from server.control.observation import HistogramDelta
from server.control.state_schema import StateReader, pack_floats

# The grid: 1 ms to 1,000 s, 40 bins a decade (5.9 % wide): finer than any promise.
GRID_LOW_S, GRID_HIGH_S, BINS_PER_DECADE = 1e-3, 1e3, 40
GRID_EDGES: FloatArray = np.logspace(
    math.log10(GRID_LOW_S),
    math.log10(GRID_HIGH_S),
    round(math.log10(GRID_HIGH_S / GRID_LOW_S) * BINS_PER_DECADE) + 1,
)
GRID_BINS = len(GRID_EDGES) - 1
GRID_CENTRES: FloatArray = np.sqrt(GRID_EDGES[:-1] * GRID_EDGES[1:])
LOG_EDGES: FloatArray = np.log(GRID_EDGES)


def bucket_counts(hist: HistogramDelta) -> FloatArray:
    """One count a bucket bound, and +Inf (validation's shape)."""
    n = len(hist.upper_bounds) + 1
    if len(hist.bucket_counts) == n:  # as validation lets every window in
        return np.array(hist.bucket_counts, dtype=np.float64)
    counts = np.zeros(n)
    given = np.asarray(hist.bucket_counts[:n], dtype=np.float64)
    counts[: len(given)] = given
    return counts


def shaped_cdf(hist: HistogramDelta, at: FloatArray, above: FloatArray | None) -> FloatArray:
    """Observations at most each of `at`, exact at bucket bounds. Inside a bucket the
    count is split as a power law (a truncated Pareto) through `above`, the mass above
    each bucket bound in many windows pooled: vLLM's TTFT buckets jump from 0.1 to 0.25 s,
    just where a p90 lies, and spreading that bucket evenly put conv 2023's pooled p90
    (50 % peak, default clocks) at 151 ms against its requests' 115 ms. The first bucket
    (from 0) and a bucket with nothing pooled above it are spread evenly, as without
    `above`; the +Inf bucket's observations sit at the last finite bound."""
    bounds = np.concatenate(([0.0], np.asarray(hist.upper_bounds, dtype=np.float64)))
    counts = bucket_counts(hist)
    cum = np.concatenate(([0.0], np.cumsum(counts[:-1])))
    cum[-1] += counts[-1]  # +Inf: at the last bound
    x = np.asarray(at, dtype=np.float64)
    result: FloatArray = np.interp(x, bounds, cum)
    if above is None or len(above) != len(bounds):
        return result
    # Only a bucket holding observations, with pooled mass above both its bounds, is
    # split differently from the even spread; the rest of the points keep it.
    s_lo, s_hi = above[:-1], above[1:]  # per bucket between bounds j and j + 1
    split = (counts[:-1] > 0) & (s_hi > 0) & (s_lo > s_hi) & (bounds[:-1] > 0)
    if not split.any():
        return result
    # The bucket each point falls in; a point on a bound splits nothing (depth 0). j runs
    # from -1 (below every bound) to len(split) (above the last): both ends index a
    # False put there for them, which is cheaper than clipping j and testing its range.
    j = np.searchsorted(bounds, x, side="right") - 1
    where = np.flatnonzero(np.append(split, False)[j])
    if where.size == 0:
        return result
    jj = j[where]
    lo, hi = bounds[jj], bounds[jj + 1]
    ratio = s_hi[jj] / s_lo[jj]
    depth = np.log(x[where] / lo) / np.log(hi / lo)
    result[where] = cum[jj] + counts[jj] * (1.0 - ratio**depth) / (1.0 - ratio)
    return result


class PooledLatencies:
    """Requests' latencies pooled over recent windows on a log grid, old windows decaying
    so the pool spans about `windows` windows."""

    def __init__(self, windows: int) -> None:
        self.windows = windows
        self.mass: FloatArray = np.zeros(GRID_BINS)
        # Read several times a decision, changed once a window: cached until add().
        self._cum: FloatArray | None = None
        self._quantiles: dict[float, float | None] = {}
        self._stats: dict[str, float | None] = {}
        # The windows' own bucket counts, unscaled and decaying as the pool does: the
        # shape of the tail between two bucket bounds (see shaped_cdf).
        self.bounds: tuple[float, ...] | None = None
        self.bucket_mass: FloatArray | None = None
        self._above: FloatArray | None = None  # mass_above_bounds, until the next add

    @property
    def total(self) -> float:
        return float(self._cumulative()[-1])

    def _cumulative(self) -> FloatArray:
        """Mass at most each grid edge (GRID_BINS + 1 values, from 0)."""
        if self._cum is None:
            self._cum = np.concatenate(([0.0], np.cumsum(self.mass)))
        return self._cum

    def add(self, hist: HistogramDelta, scale: float) -> None:
        """Fold in a window's histogram with every value multiplied by `scale`."""
        if hist.count <= 0 or not math.isfinite(scale) or scale <= 0:
            return
        self._learn_shape(hist)
        cdf = shaped_cdf(hist, GRID_EDGES / scale, self.mass_above_bounds())
        cdf[0] = 0.0  # what lies below the grid counts in its first bin
        cdf[-1] = float(hist.count)  # and what lies above, in its last
        self.mass *= 1.0 - 1.0 / self.windows
        self.mass += np.maximum(np.diff(cdf), 0.0)
        self._cum = None
        self._quantiles.clear()
        self._stats.clear()

    def learn_shape(self, hist: HistogramDelta) -> None:
        """Fold a window's bucket counts into the tail's shape only (see at_most)."""
        if hist.count > 0:
            self._learn_shape(hist)

    def _learn_shape(self, hist: HistogramDelta) -> None:
        counts = bucket_counts(hist)
        if self.bounds != hist.upper_bounds or self.bucket_mass is None:
            self.bounds, self.bucket_mass = hist.upper_bounds, np.zeros(len(counts))
        self.bucket_mass *= 1.0 - 1.0 / self.windows
        self.bucket_mass += counts
        self._above = None

    def mass_above_bounds(self) -> FloatArray | None:
        """Pooled observations above 0 and each bucket bound (None before any window)."""
        if self.bucket_mass is None:
            return None
        if self._above is None:
            total = float(self.bucket_mass.sum())
            self._above = total - np.concatenate(([0.0], np.cumsum(self.bucket_mass[:-1])))
        return self._above

    def at_most(self, hist: HistogramDelta, x: float) -> float:
        """A window's observations at most x, shaped inside its bucket as the pool's are
        (shaped_cdf at one point, without the arrays): one window holds too few requests
        to show its own tail's shape."""
        bounds = hist.upper_bounds
        k = bisect.bisect_right(bounds, x)  # the first bound above x (they rise)
        above = self.mass_above_bounds()
        if k == len(bounds) or k == 0 or above is None or len(above) != len(bounds) + 1:
            return hist.count_at_most(x)
        lo, hi = bounds[k - 1], bounds[k]
        s_lo, s_hi = float(above[k]), float(above[k + 1])  # above[0] is above 0
        if x <= lo or not s_lo > s_hi > 0:
            return hist.count_at_most(x)
        ratio = s_hi / s_lo
        depth = math.log(x / lo) / math.log(hi / lo)
        fraction = (1.0 - math.pow(ratio, depth)) / (1.0 - ratio)
        return float(sum(hist.bucket_counts[:k]) + hist.bucket_counts[k] * fraction)

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0-1), log-interpolated inside a grid bin; None when empty."""
        if q not in self._quantiles:
            self._quantiles[q] = self._quantile(q)
        return self._quantiles[q]

    def _quantile(self, q: float) -> float | None:
        cum = self._cumulative()
        total = float(cum[-1])
        if total <= 0:
            return None
        i = min(max(int(np.searchsorted(cum, q * total)) - 1, 0), GRID_BINS - 1)
        frac = (q * total - cum[i]) / self.mass[i] if self.mass[i] > 0 else 0.0
        lo, hi = math.log(GRID_EDGES[i]), math.log(GRID_EDGES[i + 1])
        return math.exp(lo + (hi - lo) * min(max(frac, 0.0), 1.0))

    def mean(self) -> float | None:
        """The mean, each bin's mass at its geometric centre (within 3 %)."""
        if "mean" not in self._stats:
            total = self.total
            self._stats["mean"] = float(self.mass @ GRID_CENTRES) / total if total > 0 else None
        return self._stats["mean"]

    def share_above(self, x: float) -> float | None:
        cum = self._cumulative()
        total = float(cum[-1])
        if total <= 0:
            return None
        at_most = float(np.interp(math.log(max(x, 1e-12)), LOG_EDGES, cum))
        return max(0.0, 1.0 - at_most / total)

    def packed(self) -> str:
        return pack_floats(self.mass)

    def shape_to_dict(self) -> dict[str, Any] | None:
        if self.bounds is None or self.bucket_mass is None:
            return None
        return {"bounds": list(self.bounds), "mass": pack_floats(self.bucket_mass)}

    def load_shape(self, data: Any, read: StateReader, name: str) -> None:
        """Restore shape_to_dict(); refuses what add() could not have built."""
        if data is None:
            self.bounds = self.bucket_mass = None
            return
        data = read.mapping(data, name, keys={"bounds", "mass"})
        bounds = read.numbers(data.get("bounds"), f"{name}.bounds")
        mass = read.floats(data.get("mass"), f"{name}.mass", length=len(bounds) + 1)
        if not bounds or any(b <= a for a, b in itertools.pairwise(bounds)):
            raise read.fail(f"{name}.bounds", "must rise")
        if bounds[0] <= 0 or np.any(mass < 0):
            raise read.fail(name, "bounds must be above 0 and masses not negative")
        self.bounds = tuple(bounds)
        self.bucket_mass = mass

    @classmethod
    def from_packed(cls, data: Any, windows: int, read: StateReader, name: str) -> PooledLatencies:
        """Restore packed() (or the list an older build wrote)."""
        values = read.floats(data, name, length=GRID_BINS)
        if np.any(values < 0):
            raise read.fail(name, "masses must not be negative")
        pool = cls(windows)
        pool.mass = values
        return pool


class CountedShare:
    """Integral control that holds the share of requests over a line at an allowed share,
    counted over the long run; `gain` (below 1: tighter) is what it steers."""

    # Per window the log gain moves by RATE x (over - allowed x n) / (mean requests per
    # window): a sustained excess of 6 points of the requests halves the gain in about
    # 100 windows, while one window's binomial noise moves it about 1 %.
    RATE = 0.1
    # At a small allowed share that pace is too slow for a promise over an hour: with half
    # a point allowed, a sustained excess of half a point halved the gain in 1,400 windows
    # (TPOT misses on Poisson at 50 % peak). `relative` paces on the share's own scale
    # instead: an excess of the allowed share again halves the gain in about 100 windows
    # (log 2 / 100), whatever the share; the floor keeps an allowed 0 finite.
    RELATIVE_RATE = 0.007
    RELATIVE_FLOOR = 0.002
    GAIN_MIN, GAIN_MAX = 0.1, 3.0
    _MEAN_DECAY = 1.0 / 300.0

    def __init__(self, relative: bool = False) -> None:
        self.relative = relative
        self.log_gain = 0.0
        self.mean_requests = 0.0  # requests per window, decayed

    @property
    def gain(self) -> float:
        return math.exp(self.log_gain)

    def add(self, over: float, requests: float, allowed: float) -> None:
        if requests <= 0 or not (math.isfinite(over) and math.isfinite(allowed)):
            return
        if self.mean_requests <= 0:
            self.mean_requests = requests
        else:
            self.mean_requests += self._MEAN_DECAY * (requests - self.mean_requests)
        # `over` may be below 0: fewer over the line than its counterfactual had.
        debt = (min(max(over, -requests), requests) - allowed * requests) / self.mean_requests
        rate = self.RATE
        if self.relative:
            rate = self.RELATIVE_RATE / max(allowed, self.RELATIVE_FLOOR)
        self.log_gain = min(
            math.log(self.GAIN_MAX), max(math.log(self.GAIN_MIN), self.log_gain - rate * debt)
        )

    def to_dict(self) -> dict[str, float]:
        return {"log_gain": self.log_gain, "mean_requests": self.mean_requests}

    @classmethod
    def from_dict(
        cls,
        data: Any,
        read: StateReader,
        name: str,
        relative: bool = False,
    ) -> CountedShare:
        data = read.mapping(data, name, keys={"log_gain", "mean_requests"})
        share = cls(relative)
        share.log_gain = read.bounded(
            data.get("log_gain"),
            f"{name}.log_gain",
            math.log(cls.GAIN_MIN),
            math.log(cls.GAIN_MAX),
        )
        share.mean_requests = read.bounded(
            data.get("mean_requests"), f"{name}.mean_requests", 0.0, math.inf
        )
        return share


class TtftPromises:
    """The TTFT limit that keeps the admin's two first-token promises, from counts.

    `slowdown` (None: no relative promise) is what the p-th percentile may grow against
    default's; `attainment_loss` (None: not held here) the share of requests that may
    newly miss the TTFT objective.
    """

    def __init__(self, windows: int) -> None:
        self.reference = PooledLatencies(windows)
        self.tail = CountedShare()
        self.misses = CountedShare()

    def default_quantile(self, q: float) -> float | None:
        """Default clocks' q-quantile (0-1) as estimated, once enough requests are pooled."""
        if self.reference.total < 20:
            return None
        return self.reference.quantile(q)

    def tail_ratio(self, q: float) -> float | None:
        """Requests' q-quantile over their mean, in the reference: what turns a limit on
        the percentile into one on a window's mean latency (the models' quantity)."""
        quantile, mean = self.default_quantile(q), self.reference.mean()
        if quantile is None or mean is None or mean <= 0:
            return None
        return max(1.0, quantile / mean)

    def limit(
        self, q: float, slowdown: float | None, slo_s: float, attainment_loss: float | None
    ) -> float:
        """The p-th percentile TTFT the next window may aim at."""
        limit = slo_s
        if attainment_loss is not None:
            limit *= self.misses.gain
        ref = self.default_quantile(q)
        if slowdown is not None and ref is not None:
            limit = min(limit, self.tail.gain * (1.0 + slowdown) * ref)
        return limit

    def add(
        self,
        hist: HistogramDelta,
        speedup: float,
        q: float,
        slowdown: float | None,
        slo_s: float,
        attainment_loss: float | None,
        other_misses: float = 0.0,
    ) -> float:
        """Count the window against the promises, then pool it. `other_misses` are the
        requests this window newly let miss another objective (TPOT): the attainment
        promise is one budget for both. Returns those it newly let over the TTFT objective
        (0 when attainment is not held here or default's reference is not yet known).

        A window is charged only for the requests it let over a line beyond those its own
        counterfactual (the same histogram scaled to default clocks) would have: a busy
        hour at default clocks is over the trailing reference's line without any help
        from us, and charging it left the gain at its floor for the quiet hour after
        (conv 2023, 50 % peak: +2.9 % p90 TTFT used of the 5 % aimed at).
        """
        n = float(hist.count)
        ref = self.default_quantile(q)
        slo_excess = 0.0
        if ref is not None and speedup > 0:

            def excess_over(line: float) -> float:
                # over the line as served, minus over it as default would have served
                pool = self.reference
                return pool.at_most(hist, line / speedup) - pool.at_most(hist, line)

            if slowdown is not None:
                line = (1.0 + slowdown) * ref
                beyond = self.reference.share_above(line) or 0.0
                self.tail.add(excess_over(line), n, max(0.0, (1.0 - q) - beyond))
            if attainment_loss is not None:
                slo_excess = excess_over(slo_s)
                self.misses.add(slo_excess + other_misses, n, attainment_loss)
        self.reference.add(hist, speedup)
        return slo_excess

    def resume(self) -> None:
        """After a restore the reference (the load of then) fades on its own; the gains
        were steered for that load, so they start again from 1."""
        self.tail = CountedShare()
        self.misses = CountedShare()

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference.packed(),
            "reference_buckets": self.reference.shape_to_dict(),
            "tail": self.tail.to_dict(),
            "misses": self.misses.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Any, windows: int, read: StateReader, name: str) -> TtftPromises:
        data = read.mapping(data, name, keys={"reference", "reference_buckets", "tail", "misses"})
        promises = cls(windows)
        promises.reference = PooledLatencies.from_packed(
            data.get("reference"), windows, read, f"{name}.reference"
        )
        promises.reference.load_shape(
            data.get("reference_buckets"), read, f"{name}.reference_buckets"
        )
        promises.tail = CountedShare.from_dict(data.get("tail"), read, f"{name}.tail")
        promises.misses = CountedShare.from_dict(data.get("misses"), read, f"{name}.misses")
        return promises

"""HistogramDelta.count_at_most against its definition, bucket by bucket."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from server.control.observation import HistogramDelta


def _walked(h: HistogramDelta, x: float) -> float:
    """The definition: whole buckets up to x, then x's share of its own bucket (spread
    evenly), nothing of the +Inf bucket unless x is infinite."""
    seen, lower = 0.0, 0.0
    for i, n in enumerate(h.bucket_counts):
        upper = h.upper_bounds[i] if i < len(h.upper_bounds) else math.inf
        if x >= upper:
            seen += n
            lower = upper
            continue
        if n > 0 and x > lower and not math.isinf(upper):
            seen += n * (x - lower) / (upper - lower)
        break
    return seen


BOUNDS = st.lists(
    st.floats(min_value=1e-4, max_value=1e4), min_size=1, max_size=12, unique=True
).map(lambda b: tuple(sorted(b)))


@given(
    bounds=BOUNDS,
    data=st.data(),
    x=st.one_of(
        st.floats(min_value=-1.0, max_value=2e4),
        st.sampled_from([0.0, math.inf, -math.inf, math.nan]),
    ),
)
def test_count_at_most_is_the_bucket_walk(
    bounds: tuple[float, ...], data: st.DataObject, x: float
) -> None:
    size = data.draw(st.sampled_from([len(bounds) + 1, len(bounds), 1]), label="buckets")
    counts = tuple(data.draw(st.lists(st.integers(0, 10**6), min_size=size, max_size=size)))
    if data.draw(st.booleans(), label="x on a bound"):
        x = data.draw(st.sampled_from(bounds))
    h = HistogramDelta(bounds, counts, 1.0, sum(counts))
    got, want = h.count_at_most(x), _walked(h, x)
    assert got == want or (math.isnan(got) and math.isnan(want))

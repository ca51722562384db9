"""Clock grids searched by the bench-only policies (best-static, oracle)."""

from __future__ import annotations

from server.control.policy import ClockArms


def clock_grid(arms: ClockArms, step_mhz: int, min_fraction: float) -> list[int]:
    """Supported clocks from the top one down in step_mhz steps, not below min_fraction x top.

    Descending, because both searches walk down from the top and stop once latency breaks.
    """
    if step_mhz <= 0:
        raise ValueError("the clock grid step must be positive")
    if not arms.supported_mhz:
        raise ValueError("the GPU reports no supported clocks")
    top = arms.supported_mhz[-1]
    floor = top * min_fraction
    out: list[int] = []
    target = top
    while target >= floor:
        clock = arms.snap_down(target)
        if clock is None or clock < floor:
            break
        if not out or clock != out[-1]:
            out.append(clock)
        target -= step_mhz
    return out

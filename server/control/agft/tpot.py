"""agft's TPOT side of the attainment promise: requests whose own TPOT newly misses.

A request meets the SLO only if both its first token and its time per output token do,
so the attainment promise (at most a few points given up against default clocks) is one
budget for both. Until this was counted, agft held it on first tokens alone while its
token-gap budget was a mean over every gap of every request: at the SLO-only promise on
Poisson arrivals at 50 % peak (seed 1) it gave up 1.004 points against the 1 promised,
954 of its 1,075 new misses TPOT misses of short answers (median 8 tokens), whose few
gaps average above the objective at a clock where the mean gap does not.

vLLM's per-request histogram (vllm:request_time_per_output_token_seconds) has a bucket
bound at 50 ms, so misses of a 50 ms objective are counted exactly as served; those the
same requests would have had at default clocks come from the token-gap model's speed-up,
read inside a bucket with the pooled tail's shape (tail.PooledLatencies.at_most).

The gain it steers multiplies the token-gap budget and never rises above 1: a looser
budget than the objective's own would spend the p-th percentile TPOT promise, which the
budget keeps. Its integrator still banks what quiet spells leave unspent (up to
CountedShare's ceiling), as the promise is over the whole period: capped at 1 instead,
every burst of misses tightened the budget at once, however far under the promise the
hour was (conv 2023 at 30 % peak, SLO-only: 1.6 points of saving lost while 0.14 of the
point was used). Its debt is charged with the first tokens' new misses too (and theirs
with these), so the two shares together stay within the one promise.
"""

from __future__ import annotations

from typing import Any

from server.control.agft.tail import CountedShare, PooledLatencies
from server.control.observation import HistogramDelta
from server.control.state_schema import StateReader


class TpotMisses:
    def __init__(self, windows: int) -> None:
        self.shape = PooledLatencies(windows)  # bucket counts only: the tail's shape
        self.misses = CountedShare(relative=True)

    @property
    def gain(self) -> float:
        """What the token-gap budget is multiplied by (1: as the objectives give it)."""
        return min(1.0, self.misses.gain)

    def excess(self, hist: HistogramDelta, speedup: float, slo_s: float) -> float:
        """Requests of the window over the objective, less those over it at default
        clocks (its TPOTs times `speedup`, the model's ratio to the max clock, <= 1)."""
        if hist.count <= 0 or speedup <= 0:
            return 0.0
        return self.shape.at_most(hist, slo_s / speedup) - self.shape.at_most(hist, slo_s)

    def add(self, hist: HistogramDelta, misses: float, attainment_loss: float) -> None:
        """Charge the window's new misses (these and the first tokens') against the share
        allowed of its requests, then learn the tail's shape from it."""
        self.misses.add(misses, float(hist.count), attainment_loss)
        self.shape.learn_shape(hist)

    def resume(self) -> None:
        """As TtftPromises.resume: a gain steered for the load of then starts again."""
        self.misses = CountedShare(relative=True)

    def to_dict(self) -> dict[str, Any]:
        return {"shape": self.shape.shape_to_dict(), "misses": self.misses.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, windows: int, read: StateReader, name: str) -> TpotMisses:
        data = read.mapping(data, name, keys={"shape", "misses"})
        tpot = cls(windows)
        tpot.shape.load_shape(data.get("shape"), read, f"{name}.shape")
        tpot.misses = CountedShare.from_dict(
            data.get("misses"), read, f"{name}.misses", relative=True
        )
        return tpot

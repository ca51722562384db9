"""Reference numbers the simulator is calibrated against (shipped in sim/data/calibration),
and a report comparing the model with them (``agft sim calibrate``; docs/SIMULATOR.md)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from sim.physics import StepModel
from sim.profiles import gpu_profile, model_profile
from sim.sweep import LOADS, measure

__all__ = [
    "POWER_ANCHORS_W",
    "SPLITWISE_HARDWARE",
    "VIDUR_GPU",
    "Check",
    "calibration_report",
    "decode_step_ms",
    "prefill_step_ms",
    "splitwise_reference",
    "vidur_reference",
]

_DIR = Path(__file__).resolve().parent / "data" / "calibration"

# splitwise-sim's power constants at default clocks (Patel et al., ISCA 2024), as quoted in
# shared/data/README.md: (idle, decode-dominated, prefill-saturated) watts per GPU.
POWER_ANCHORS_W: dict[str, tuple[float, float, float]] = {
    "h100-sxm": (75.0, 380.0, 700.0),
    "a100-sxm": (63.0, 250.0, 400.0),
}
SPLITWISE_HARDWARE = {"h100-sxm": "h100-80gb", "a100-sxm": "a100-80gb"}
VIDUR_GPU = {"h100-sxm": "h100", "a100-sxm": "a100"}


def splitwise_reference(hardware: str) -> list[tuple[int, int, float, float]]:
    """(prompt_size, batch_size, prompt_time_ms, token_time_ms) medians, Llama2-70B TP4."""
    with open(_DIR / "splitwise_llama2_70b_tp4.csv", encoding="utf-8") as fh:
        return [
            (
                int(r["prompt_size"]),
                int(r["batch_size"]),
                float(r["prompt_time_ms_median"]),
                float(r["token_time_ms_median"]),
            )
            for r in csv.DictReader(fh)
            if r["hardware"] == hardware
        ]


def vidur_reference(gpu: str) -> dict[int, float]:
    """num_tokens -> per-layer non-attention time (ms), Llama-2-7B, TP1, default clocks."""
    with open(_DIR / "vidur_llama2_7b_layer_ms.csv", encoding="utf-8") as fh:
        return {
            int(r["num_tokens"]): float(r["layer_ms_sum_of_medians"])
            for r in csv.DictReader(fh)
            if r["gpu"] == gpu
        }


def prefill_step_ms(sm: StepModel, tokens: int) -> float:
    """One whole prompt in one step, nothing else batched (splitwise's prompt_time)."""
    return 1000.0 * sm.step_time(sm.cost(tokens, tokens * (tokens + 1) / 2, 0, 1, 1), sm.f_max)


def decode_step_ms(sm: StepModel, batch: int, context: int, f: float | None = None) -> float:
    """One decode step of ``batch`` sequences with ``context`` tokens each."""
    cost = sm.cost(batch, batch * (context + 1), batch * (context + 1), batch, batch)
    return 1000.0 * sm.step_time(cost, f or sm.f_max)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    measured: float
    target: str
    ok: bool


def _grid_clock(gpu: str, fraction: float) -> int:
    grid = gpu_profile(gpu).supported_sm_clocks_mhz()
    return min(grid, key=lambda f: abs(f - fraction * grid[0]))


def calibration_report() -> list[Check]:
    """Every calibration anchor, measured now (takes ~20 s)."""
    out: list[Check] = []
    for gpu in ("h100-sxm", "a100-sxm"):
        f70 = _grid_clock(gpu, 0.7)
        for model in ("llama-3.1-8b", "llama-2-70b"):
            tag = f"{gpu} {model}"
            base = measure(gpu, model, LOADS["prefill-heavy"])
            slow = measure(gpu, model, LOADS["prefill-heavy"], f70)
            r = slow.step_time_ms / base.step_time_ms
            out.append(Check(f"{tag}: prefill x at {f70} MHz", r, "1.25-1.45", 1.25 <= r <= 1.45))
            sm = StepModel(gpu_profile(gpu), model_profile(model))
            worst = max(
                decode_step_ms(sm, b, 1024, f70) / decode_step_ms(sm, b, 1024)
                for b in (1, 2, 4, 8, 16, 32)
            )
            out.append(
                Check(f"{tag}: decode b<=32 x at {f70} MHz", worst, "<= 1.05", worst <= 1.05)
            )
            idle_w, dec_w, pre_w = POWER_ANCHORS_W[gpu]
            dec = measure(gpu, model, LOADS["decode-heavy"])
            for label, got, want in (
                ("idle", sm.idle_power(float(gpu_profile(gpu).idle_sm_clock_mhz)), idle_w),
                ("decode power", dec.power_w, dec_w),
                ("prefill power", base.power_w, pre_w),
            ):
                ok = abs(got / want - 1) <= 0.15
                out.append(Check(f"{tag}: {label} (W)", got, f"{want:.0f} +-15 %", ok))
            if model == "llama-3.1-8b":
                out.append(
                    Check(
                        f"{tag}: prefill at max clock capped",
                        base.power_capped_share,
                        "SwPowerCap, power = TDP",
                        base.power_capped_share > 0.99,
                    )
                )
                pts = [
                    measure(gpu, model, LOADS["decode-heavy"], f)
                    for f in sorted(gpu_profile(gpu).supported_sm_clocks_mhz()[::4])
                ]
                best = min(pts, key=lambda p: p.j_per_output_token)
                frac = best.sm_clock_mhz / gpu_profile(gpu).sm_clock_max_mhz
                out.append(
                    Check(f"{tag}: decode energy/token min (x f_max)", frac, "0.50-0.85",
                          0.5 <= frac <= 0.85)
                )  # fmt: skip
        sm70 = StepModel(gpu_profile(gpu), model_profile("llama-2-70b"))
        for prompt, batch, p_ms, t_ms in splitwise_reference(SPLITWISE_HARDWARE[gpu]):
            if batch == 1 and prompt in (512, 1024, 2048):
                r = prefill_step_ms(sm70, prompt) / p_ms
                out.append(Check(f"{gpu} 70B TP4 prefill {prompt} / splitwise", r, "0.75-1.25",
                                 0.75 <= r <= 1.25))  # fmt: skip
            if prompt == 512 and batch <= 32:
                r = decode_step_ms(sm70, batch, 576) / t_ms
                out.append(Check(f"{gpu} 70B TP4 decode b{batch} / splitwise", r, "0.75-1.25",
                                 0.75 <= r <= 1.25))  # fmt: skip
        sm7 = StepModel(gpu_profile(gpu), model_profile("llama-2-7b"))
        for n, layer_ms in vidur_reference(VIDUR_GPU[gpu]).items():
            ms = 1000.0 * sm7.gpu_time(sm7.cost(n, 0, 0, n, 0), sm7.f_max)
            r = ms / (32 * layer_ms)
            out.append(Check(f"{gpu} Llama-2-7B {n} tokens / Vidur", r, "0.75-1.25",
                             0.75 <= r <= 1.25))  # fmt: skip
    return out

"""Context features recorded with every decision (and, later, fed to the learners)."""

from __future__ import annotations

from server.control.observation import Observation


def window_features(obs: Observation) -> dict[str, float]:
    """A flat, JSON-safe summary of the window; unknown values are left out, not zeroed."""
    feats: dict[str, float] = {"duration_s": obs.duration_s}
    serving = obs.serving
    if serving is not None:
        duration = max(obs.duration_s, 1e-9)
        for key, value in (
            ("running", serving.num_requests_running),
            ("waiting", serving.num_requests_waiting),
            ("kv_cache_usage", serving.kv_cache_usage),
        ):
            if value is not None:
                feats[key] = value
        if serving.prompt_tokens is not None:
            feats["prompt_tokens_per_s"] = serving.prompt_tokens / duration
        if serving.generation_tokens is not None:
            feats["generation_tokens_per_s"] = serving.generation_tokens / duration
    energy = obs.energy_j
    if energy is not None:
        feats["power_w"] = energy / max(obs.duration_s, 1e-9)
    if obs.boosted_s is not None:
        feats["boost_share"] = min(1.0, obs.boosted_s / max(obs.duration_s, 1e-9))
    return feats

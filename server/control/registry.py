"""Policy construction by name (AGFT_POLICY on the server, --policies in `agft bench`)."""

from __future__ import annotations

from collections.abc import Callable

from server.control.policy import Policy, SloTargets
from server.control.rule import RulePolicy
from server.control.static import StaticPolicy

POLICY_NAMES = ("agft", "agft-paper", "static", "default", "rule")


class UnknownPolicyError(ValueError):
    pass


def make_policy(
    name: str,
    *,
    slo: SloTargets | None = None,
    static_clock_mhz: int | None = None,
    seed: int = 0,
) -> Policy:
    """One fresh policy for one instance. `agft:name=value:...` overrides agft's tunables
    (server/control/agft.py AgftTunables); a bad override raises ValueError."""
    slo = slo or SloTargets()
    if name == "static":
        return StaticPolicy(static_clock_mhz)
    if name == "default":
        return DefaultPolicy()
    if name == "rule":
        return RulePolicy()
    if name == "agft-paper":
        from server.control.paper import PaperPolicy

        return PaperPolicy(slo, seed=seed)
    base, sep, overrides = name.partition(":")
    if base == "agft":
        from server.control.agft import AgftPolicy, tunables_from_text

        return AgftPolicy(slo, seed=seed, **(tunables_from_text(overrides) if sep else {}))
    raise UnknownPolicyError(f"unknown policy {name!r}; known: {', '.join(POLICY_NAMES)}")


class DefaultPolicy(StaticPolicy):
    """No lock at all: the GPU's own governor (max clock under load)."""

    name = "default"

    def __init__(self) -> None:
        super().__init__(None)


def policy_factory(
    name: str,
    *,
    slo: SloTargets | None = None,
    static_clock_mhz: int | None = None,
    seed: int = 0,
) -> Callable[[], Policy]:
    """A factory making one fresh policy per instance; fails now on an unknown name."""
    make_policy(name, slo=slo, static_clock_mhz=static_clock_mhz, seed=seed)
    return lambda: make_policy(name, slo=slo, static_clock_mhz=static_clock_mhz, seed=seed)

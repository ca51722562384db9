"""Policy construction by name (the server's AGFT_POLICY setting)."""

from __future__ import annotations

from collections.abc import Callable

from server.control.policy import Policy
from server.control.static import StaticPolicy


class UnknownPolicyError(ValueError):
    pass


def policy_factory(name: str, static_clock_mhz: int | None) -> Callable[[], Policy]:
    """A factory making one fresh policy per instance."""
    if name == "static":
        return lambda: StaticPolicy(static_clock_mhz)
    if name == "default":
        return lambda: StaticPolicy(None)
    raise UnknownPolicyError(f"unknown policy {name!r}; known: static, default")

"""SLO policies as the controller sees them, and which one governs an instance.

A policy applies to a scope: the whole fleet, a pool (every instance whose labels carry
all of a selector's label = value pairs) or one instance. The most specific scope wins:
an instance's own policy, then the pool policy with the most selector labels (the
older one on a tie), then the fleet policy, then the server's settings (AGFT_SLO_*,
AGFT_POLICY), so an instance is never without one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from server.control.policy import SloTargets

SCOPES = ("fleet", "pool", "instance")
SERVER_DEFAULT = "server-default"  # the scope of the policy built from the settings


@dataclass(frozen=True, slots=True)
class SloSpec:
    """One SLO policy: objectives, the promises kept besides them, and the controller."""

    id: int | None  # None: the server default from settings
    name: str
    scope: str  # fleet | pool | instance | server-default
    targets: SloTargets
    # Most p90 slowdown against default clocks (0.10 = 10 %); None: only the SLO counts.
    max_p90_slowdown: float | None = 0.10
    # Most SLO attainment given up against default clocks, in percentage points.
    max_attainment_loss_points: float | None = 1.0
    controller: str = "agft"
    tunables: Mapping[str, Any] = field(default_factory=dict)
    selector: Mapping[str, str] = field(default_factory=dict)
    instance_id: int | None = None
    revision: str = ""  # changes whenever the policy does (its updated_at)

    @property
    def fingerprint(self) -> tuple[object, ...]:
        """What a running controller depends on: a change of any of it retargets it."""
        return (
            self.id,
            self.targets,
            self.max_p90_slowdown,
            self.max_attainment_loss_points,
            self.controller,
            json.dumps(dict(self.tunables), sort_keys=True),
        )

    def describe_scope(self) -> str:
        if self.scope == "pool":
            return "pool " + ", ".join(f"{k}={v}" for k, v in sorted(self.selector.items()))
        if self.scope == "instance":
            return f"instance {self.instance_id}"
        return self.scope


def scope_key(scope: str, selector: Mapping[str, str], instance_id: int | None) -> str:
    """One policy per scope: the database holds this unique."""
    if scope == "instance":
        return f"instance:{instance_id}"
    if scope == "pool":
        return "pool:" + json.dumps(dict(sorted(selector.items())), separators=(",", ":"))
    return scope


@dataclass(frozen=True, slots=True)
class Resolution:
    spec: SloSpec
    # Policies that also matched and lost to the winner (most specific first).
    shadowed: tuple[SloSpec, ...] = ()


def _rank(spec: SloSpec) -> tuple[int, int, int]:
    # Lower sorts first: instance, then pools by selector size, then fleet; ties by age.
    scope_rank = {"instance": 0, "pool": 1, "fleet": 2}.get(spec.scope, 3)
    return (scope_rank, -len(spec.selector), spec.id or 0)


def matches(spec: SloSpec, instance_id: int, labels: Mapping[str, str]) -> bool:
    if spec.scope == "instance":
        return spec.instance_id == instance_id
    if spec.scope == "pool":
        return all(labels.get(k) == v for k, v in spec.selector.items())
    return spec.scope == "fleet"


def resolve(
    specs: Sequence[SloSpec], instance_id: int, labels: Mapping[str, str], default: SloSpec
) -> Resolution:
    """The policy in force for one instance, and the ones it won over."""
    matching = sorted((s for s in specs if matches(s, instance_id, labels)), key=_rank)
    if not matching:
        return Resolution(default)
    return Resolution(matching[0], tuple(matching[1:]))

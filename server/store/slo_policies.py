"""SLO policies in the database: read them as SloSpecs, change them with an audit entry."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from server.control.policy import SloTargets
from server.slo.spec import SloSpec, scope_key
from server.store import audit
from server.store.models import Instance, SloPolicy

# What an admin sets; everything else (id, scope_key, times) the server keeps.
FIELDS = (
    "name",
    "scope",
    "selector",
    "instance_id",
    "ttft_s",
    "tpot_s",
    "percentile",
    "max_p90_slowdown",
    "max_attainment_loss_points",
    "controller",
    "controller_tunables",
)


class PolicyConflictError(Exception):
    """Another policy already has this name or this scope."""


class PolicyTargetError(Exception):
    """The policy names an instance that does not exist."""


def _audit_view(row: SloPolicy) -> dict[str, Any]:
    view = {name: getattr(row, name) for name in FIELDS}
    view["id"] = row.id
    return view


def as_dict(row: SloPolicy) -> dict[str, Any]:
    return {**_audit_view(row), "created_at": row.created_at, "updated_at": row.updated_at}


def spec_of(values: Mapping[str, Any], policy_id: int | None = None, revision: str = "") -> SloSpec:
    """The spec of a policy's FIELDS: a stored row's, or a request's before it is stored."""
    return SloSpec(
        id=policy_id,
        name=values["name"],
        scope=values["scope"],
        targets=SloTargets(values["ttft_s"], values["tpot_s"], values["percentile"]),
        max_p90_slowdown=values["max_p90_slowdown"],
        max_attainment_loss_points=values["max_attainment_loss_points"],
        controller=values["controller"],
        tunables=dict(values["controller_tunables"]),
        selector=dict(values["selector"]),
        instance_id=values["instance_id"],
        revision=revision,
    )


def as_spec(row: SloPolicy) -> SloSpec:
    return spec_of(_audit_view(row), row.id, row.updated_at.isoformat())


def load_specs(factory: sessionmaker[Session]) -> list[SloSpec]:
    with factory() as db:
        return [as_spec(r) for r in db.scalars(select(SloPolicy).order_by(SloPolicy.id))]


def get(db: Session, policy_id: int) -> SloPolicy | None:
    return db.get(SloPolicy, policy_id)


def all_policies(db: Session) -> list[SloPolicy]:
    return list(db.scalars(select(SloPolicy).order_by(SloPolicy.id)))


def _check(db: Session, values: dict[str, Any], own_id: int | None) -> str:
    key = scope_key(values["scope"], values["selector"], values["instance_id"])
    if values["instance_id"] is not None and db.get(Instance, values["instance_id"]) is None:
        raise PolicyTargetError(f"no instance {values['instance_id']}")
    for other in db.scalars(
        select(SloPolicy).where((SloPolicy.scope_key == key) | (SloPolicy.name == values["name"]))
    ):
        if other.id == own_id:
            continue
        if other.name == values["name"]:
            raise PolicyConflictError(f"policy {other.id} is already named {other.name!r}")
        raise PolicyConflictError(
            f"policy {other.id} ({other.name!r}) already governs this scope; change it instead"
        )
    return key


def _commit(db: Session) -> None:
    try:
        db.commit()
    except IntegrityError as err:  # a concurrent change won the race for the name/scope
        db.rollback()
        raise PolicyConflictError(
            "another change took this name or scope at the same time; retry"
        ) from err


def create(factory: sessionmaker[Session], values: dict[str, Any], actor: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    with factory() as db:
        key = _check(db, values, None)
        row = SloPolicy(scope_key=key, created_at=now, updated_at=now, **values)
        db.add(row)
        db.flush()
        audit.record(
            db,
            actor=actor,
            action="slo_policy.create",
            target=f"slo_policy {row.id}",
            before=None,
            after=_audit_view(row),
        )
        _commit(db)
        return as_dict(row)


def update(
    factory: sessionmaker[Session], policy_id: int, values: dict[str, Any], actor: str
) -> dict[str, Any] | None:
    """Replace a policy's fields; None if there is no such policy."""
    with factory() as db:
        row = db.get(SloPolicy, policy_id)
        if row is None:
            return None
        before = _audit_view(row)
        key = _check(db, values, policy_id)
        for name, value in values.items():
            setattr(row, name, value)
        row.scope_key = key
        row.updated_at = datetime.now(UTC)
        after = _audit_view(row)
        if after != before:
            audit.record(
                db,
                actor=actor,
                action="slo_policy.update",
                target=f"slo_policy {row.id}",
                before=before,
                after=after,
            )
        _commit(db)
        return as_dict(row)


def delete(factory: sessionmaker[Session], policy_id: int, actor: str) -> bool:
    with factory() as db:
        row = db.get(SloPolicy, policy_id)
        if row is None:
            return False
        audit.record(
            db,
            actor=actor,
            action="slo_policy.delete",
            target=f"slo_policy {row.id}",
            before=_audit_view(row),
            after=None,
        )
        db.delete(row)
        db.commit()
        return True

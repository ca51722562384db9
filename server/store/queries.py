"""Read queries for the API and the dashboard (sync; run them off the event loop)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Result, Select, select
from sqlalchemy.orm import Session

from server.store.models import Decision, Gpu, Instance, Node


def nodes_with_gpus(db: Session) -> list[dict[str, Any]]:
    nodes = db.scalars(select(Node).order_by(Node.node_id)).all()
    gpus = db.scalars(select(Gpu).order_by(Gpu.node_pk, Gpu.index)).all()
    by_node: dict[int, list[Gpu]] = {}
    for g in gpus:
        by_node.setdefault(g.node_pk, []).append(g)
    return [
        {
            "id": n.id,
            "node_id": n.node_id,
            "hostname": n.hostname,
            "agent_version": n.agent_version,
            "connected": n.connected,
            "first_seen_at": n.first_seen_at,
            "last_seen_at": n.last_seen_at,
            "gpus": by_node.get(n.id, []),
        }
        for n in nodes
    ]


_INSTANCE_FIELDS = (
    "id",
    "name",
    "engine",
    "model_name",
    "metrics_url",
    "monitor_only_reason",
    "labels",
    "mode",
    "pinned_sm_clock_mhz",
    "mode_note",
    "mode_changed_at",
    "mode_changed_by",
    "gpu_indices",
    "last_seen_at",
)
_INSTANCE_COLUMNS = [Instance.__table__.c[name] for name in _INSTANCE_FIELDS]


def _instance_rows() -> Select[Any]:
    # Plain rows, not ORM objects: a fleet lists thousands, and hydrating each into the
    # session's identity map cost more than the query.
    return select(*_INSTANCE_COLUMNS, Node.node_id, Node.connected).join(
        Node, Node.id == Instance.node_pk
    )


def _dicts(result: Result[Any]) -> list[dict[str, Any]]:
    keys = list(result.keys())  # once, not a mapping's keys rebuilt for every row
    return [dict(zip(keys, row, strict=True)) for row in result]


def instances(db: Session) -> list[dict[str, Any]]:
    return _dicts(db.execute(_instance_rows().order_by(Node.node_id, Instance.name)))


def instance(db: Session, instance_id: int) -> dict[str, Any] | None:
    found = _dicts(db.execute(_instance_rows().where(Instance.id == instance_id)))
    return found[0] if found else None


def decisions_page(
    db: Session,
    instance_id: int,
    limit: int,
    before_id: int | None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Sequence[Decision]:
    """Newest first, keyset-paginated on id (stable while new rows arrive); since/until
    bound the windows' end times (since inclusive, until exclusive)."""
    query = select(Decision).where(Decision.instance_id == instance_id)
    if before_id is not None:
        query = query.where(Decision.id < before_id)
    if since is not None:
        query = query.where(Decision.window_end >= since)
    if until is not None:
        query = query.where(Decision.window_end < until)
    return db.scalars(query.order_by(Decision.id.desc()).limit(limit)).all()


def instance_default_clock_mhz(db: Session, instance_id: int) -> int | None:
    """The lowest default SM clock of the instance's GPUs (its group runs at the slowest)."""
    inst = db.get(Instance, instance_id)
    if inst is None:
        return None
    clocks = db.scalars(
        select(Gpu.default_sm_clock_mhz).where(
            Gpu.node_pk == inst.node_pk, Gpu.index.in_(inst.gpu_indices)
        )
    ).all()
    return min(clocks, default=None)

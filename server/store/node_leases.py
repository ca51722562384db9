"""Node leases: one replica at a time controls a node (and so every GPU on it).

Take, renew and give back, each one statement. A replica takes a node whose lease ran
out or is its own; renewing says which of its nodes it still holds, so one that lost
its lease (it was too slow to renew, another replica took over) stops deciding.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from server.store.models import NodeLease

_LEASES = cast(Table, NodeLease.__table__)


def take_node(
    factory: sessionmaker[Session], node_id: str, replica_id: str, lease_s: float, now: datetime
) -> tuple[str, datetime] | None:
    """Take (or keep) the node's lease: None when taken, else (holder, until when)."""
    expires = now + timedelta(seconds=lease_s)
    with factory.begin() as db:
        insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
        stmt = insert(_LEASES).values(
            node_id=node_id, replica_id=replica_id, acquired_at=now, expires_at=expires
        )
        # Only a lease that ran out, or our own, changes hands: the condition and the
        # write are one statement, so two replicas racing for a node cannot both win.
        upsert = stmt.on_conflict_do_update(
            index_elements=[_LEASES.c.node_id],
            set_={
                "replica_id": stmt.excluded.replica_id,
                "acquired_at": stmt.excluded.acquired_at,
                "expires_at": stmt.excluded.expires_at,
            },
            where=or_(_LEASES.c.expires_at < now, _LEASES.c.replica_id == replica_id),
        ).returning(_LEASES.c.replica_id)
        if db.execute(upsert).scalar() == replica_id:
            return None
        row = db.execute(
            select(_LEASES.c.replica_id, _LEASES.c.expires_at).where(_LEASES.c.node_id == node_id)
        ).one()
        return str(row.replica_id), row.expires_at


def renew_nodes(
    factory: sessionmaker[Session],
    node_ids: list[str],
    replica_id: str,
    lease_s: float,
    now: datetime,
) -> set[str]:
    """Extend this replica's leases of node_ids; returns the ones it still holds."""
    if not node_ids:
        return set()
    expires = now + timedelta(seconds=lease_s)
    with factory.begin() as db:
        db.execute(
            update(_LEASES)
            .where(_LEASES.c.replica_id == replica_id, _LEASES.c.node_id.in_(node_ids))
            .values(expires_at=expires)
        )
        held = db.scalars(
            select(_LEASES.c.node_id).where(
                _LEASES.c.replica_id == replica_id, _LEASES.c.node_id.in_(node_ids)
            )
        ).all()
    return set(held)


def give_back_nodes(factory: sessionmaker[Session], node_ids: list[str], replica_id: str) -> None:
    """Release this replica's leases of node_ids, so another replica may take them at once."""
    if not node_ids:
        return
    with factory.begin() as db:
        db.execute(
            delete(_LEASES).where(
                _LEASES.c.replica_id == replica_id, _LEASES.c.node_id.in_(node_ids)
            )
        )

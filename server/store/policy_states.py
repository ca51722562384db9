"""Learned policy state per instance: saved as JSON, loaded back at (re)connect."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from server.store.models import PolicyState

UPDATED = ("state", "decisions", "updated_at")


def upsert_policy_state(db: Session, row: dict[str, Any]) -> None:
    upsert_policy_states(db, [row])


def upsert_policy_states(db: Session, rows: list[dict[str, Any]]) -> None:
    """Insert or replace each (instance, policy) state: one executemany statement, not a
    statement per row (a fleet saves thousands every few seconds)."""
    if not rows:
        return
    dialect = db.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(cast(Table, PolicyState.__table__))
    stmt = stmt.on_conflict_do_update(
        index_elements=[PolicyState.instance_id, PolicyState.policy],
        set_={name: stmt.excluded[name] for name in UPDATED},
    )
    db.execute(stmt, rows)


def load_policy_states(
    factory: sessionmaker[Session], instance_ids: list[int], policy: str
) -> dict[int, dict[str, Any]]:
    return {i: state for (_, i), state in load_states(factory, {policy: instance_ids}).items()}


def load_states(
    factory: sessionmaker[Session], wanted: dict[str, list[int]]
) -> dict[tuple[str, int], dict[str, Any]]:
    """Saved states by (policy, instance id), for each policy's instances, in one session."""
    found: dict[tuple[str, int], dict[str, Any]] = {}
    with factory() as db:
        for policy, instance_ids in wanted.items():
            if not instance_ids:
                continue
            rows = db.scalars(
                select(PolicyState).where(
                    PolicyState.instance_id.in_(instance_ids), PolicyState.policy == policy
                )
            ).all()
            found.update(((policy, r.instance_id), r.state) for r in rows)
    return found

"""Learned policy state per instance: saved as JSON, loaded back at (re)connect."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from server.store.models import PolicyState

UPDATED = ("state", "decisions", "updated_at")


def upsert_policy_state(db: Session, row: dict[str, Any]) -> None:
    dialect = db.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(PolicyState).values(**row)
    stmt = stmt.on_conflict_do_update(
        index_elements=[PolicyState.instance_id, PolicyState.policy],
        set_={name: stmt.excluded[name] for name in UPDATED},
    )
    db.execute(stmt)


def load_policy_states(
    factory: sessionmaker[Session], instance_ids: list[int], policy: str
) -> dict[int, dict[str, Any]]:
    if not instance_ids:
        return {}
    with factory() as db:
        rows = db.scalars(
            select(PolicyState).where(
                PolicyState.instance_id.in_(instance_ids), PolicyState.policy == policy
            )
        ).all()
        return {r.instance_id: r.state for r in rows}

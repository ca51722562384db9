"""The audit log: every change made through the API, written in the change's transaction.

A change and its audit entry commit together or not at all, so the log can be trusted
to hold every change and nothing that did not happen.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from server.store.models import AuditEntry


def record(
    db: Session,
    *,
    actor: str,
    action: str,
    target: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> None:
    db.add(
        AuditEntry(
            at=datetime.now(UTC),
            actor=actor[:255],
            action=action,
            target=target[:255],
            before=before,
            after=after,
        )
    )


def entries(
    db: Session,
    *,
    limit: int,
    before_id: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    target: str | None = None,
) -> Sequence[AuditEntry]:
    """Newest first, keyset-paginated on id."""
    query = select(AuditEntry)
    if before_id is not None:
        query = query.where(AuditEntry.id < before_id)
    if since is not None:
        query = query.where(AuditEntry.at >= since)
    if until is not None:
        query = query.where(AuditEntry.at < until)
    if target is not None:
        query = query.where(AuditEntry.target == target)
    return db.scalars(query.order_by(AuditEntry.id.desc()).limit(limit)).all()

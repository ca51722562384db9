"""Retention: decisions and clock commands older than the setting are deleted.

At one window a second, each instance adds 86,400 decisions a day; a fleet of 10,000
instances, 864 million. Kept for ever, the table and its indexes outgrow any disk, so
they are kept `decision_retention_days` (default 30). The per-minute sums the energy
reports read (server/store/rollups.py) are not deleted: savings over last year stay
reportable. Deletes go in chunks, each its own transaction, so the writer's inserts
never wait long on the retention's locks, and the loop survives any failure (logged,
tried again next time): a dead retention would fill the disk quietly.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from server.store.models import ClockCommand, Decision

log = logging.getLogger(__name__)

CHUNK_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class Deleted:
    decisions: int
    commands: int


def delete_before(
    factory: sessionmaker[Session], before: datetime, chunk: int = CHUNK_ROWS
) -> Deleted:
    """Delete decisions whose window ended, and commands issued, before `before`."""
    decisions = 0
    while n := _delete_decisions(factory, before, chunk):
        decisions += n
    commands = 0
    while n := _delete_commands(factory, before, chunk):
        commands += n
    return Deleted(decisions, commands)


def _delete_decisions(factory: sessionmaker[Session], before: datetime, chunk: int) -> int:
    with factory.begin() as db:
        ids = db.scalars(select(Decision.id).where(Decision.window_end < before).limit(chunk))
        batch = list(ids)
        if batch:
            db.execute(delete(Decision).where(Decision.id.in_(batch)))
        return len(batch)


def _delete_commands(factory: sessionmaker[Session], before: datetime, chunk: int) -> int:
    with factory.begin() as db:
        ids = db.scalars(
            select(ClockCommand.id).where(ClockCommand.issued_at < before).limit(chunk)
        )
        batch = list(ids)
        if batch:
            db.execute(delete(ClockCommand).where(ClockCommand.id.in_(batch)))
        return len(batch)


async def run_retention(factory: sessionmaker[Session], days: float, interval_s: float) -> None:
    """Forever: every interval, delete what is older than `days` (off the event loop)."""
    while True:
        try:
            cut = datetime.now(UTC) - timedelta(days=days)
            deleted = await asyncio.to_thread(delete_before, factory, cut)
            if deleted.decisions or deleted.commands:
                log.info(
                    "retention: deleted %d decisions and %d clock commands from before %s",
                    deleted.decisions,
                    deleted.commands,
                    cut.isoformat(timespec="seconds"),
                )
        except Exception:
            log.exception("retention failed; trying again in %g s", interval_s)
        await asyncio.sleep(interval_s)

"""Retention and the decisions' partitions: old rows go, the days ahead are made.

At one window a second, each instance adds 86,400 decisions a day; a fleet of 10,000
instances, 864 million. Kept for ever, the table and its indexes outgrow any disk, so
they are kept `decision_retention_days` (default 30). The per-minute sums the energy
reports read (server/store/rollups.py) are not deleted: savings over last year stay
reportable.

On PostgreSQL the decisions are partitioned by UTC day (server/store/partitions.py): a
day goes as a whole, dropped once all of it is older than the retention, so a decision
is kept at least the retention and less than a day more. Rows in the default partition
(of days that had no partition) and on SQLite, decisions and every clock command, are
deleted in chunks, each its own transaction, so the writer's inserts never wait long on
the retention's locks. The loop survives any failure (logged, tried again next pass): a
dead retention would fill the disk quietly, and a dead upkeep would leave tomorrow's
decisions to the default partition.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session, sessionmaker

from server.store import partitions
from server.store.models import ClockCommand, Decision

log = logging.getLogger(__name__)

CHUNK_ROWS = 10_000


@dataclass(frozen=True, slots=True)
class Deleted:
    decisions: int  # deleted one by one (not counting the rows of dropped days)
    commands: int
    days_dropped: list[date] = field(default_factory=list)


def delete_before(
    factory: sessionmaker[Session], before: datetime, chunk: int = CHUNK_ROWS
) -> Deleted:
    """Delete decisions whose window ended, and commands issued, before `before`.

    Where the decisions are partitioned, the days wholly before `before` are dropped and
    only the default partition's rows are deleted one by one.
    """
    dropped = partitions.drop_before(factory, before)
    with factory() as db:
        by_day = partitions.is_partitioned(db)
    one_by_one = _delete_default_rows if by_day else _delete_decisions
    decisions = 0
    while n := one_by_one(factory, before, chunk):
        decisions += n
    commands = 0
    while n := _delete_commands(factory, before, chunk):
        commands += n
    return Deleted(decisions, commands, dropped)


def _delete_decisions(factory: sessionmaker[Session], before: datetime, chunk: int) -> int:
    with factory.begin() as db:
        ids = db.scalars(select(Decision.id).where(Decision.window_end < before).limit(chunk))
        batch = list(ids)
        if batch:
            db.execute(delete(Decision).where(Decision.id.in_(batch)))
        return len(batch)


def _delete_default_rows(factory: sessionmaker[Session], before: datetime, chunk: int) -> int:
    # Only the default partition: a day partition's rows go with their day.
    table = partitions.DEFAULT_PARTITION
    with factory.begin() as db:
        result = db.execute(
            text(
                f"DELETE FROM {table} WHERE ctid IN "
                f"(SELECT ctid FROM {table} WHERE window_end < :before LIMIT :chunk)"
            ),
            {"before": before, "chunk": chunk},
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def _delete_commands(factory: sessionmaker[Session], before: datetime, chunk: int) -> int:
    with factory.begin() as db:
        ids = db.scalars(
            select(ClockCommand.id).where(ClockCommand.issued_at < before).limit(chunk)
        )
        batch = list(ids)
        if batch:
            db.execute(delete(ClockCommand).where(ClockCommand.id.in_(batch)))
        return len(batch)


def upkeep_pass(factory: sessionmaker[Session], days: float, now: datetime) -> None:
    """One pass: the retention (unless `days` is 0: keep everything), then the partitions."""
    if days > 0:
        cut = now - timedelta(days=days)
        deleted = delete_before(factory, cut)
        if deleted.days_dropped:
            log.info(
                "retention: dropped the decisions of %s (every window older than %s)",
                ", ".join(day.isoformat() for day in deleted.days_dropped),
                cut.isoformat(timespec="seconds"),
            )
        if deleted.decisions or deleted.commands:
            log.info(
                "retention: deleted %d decisions and %d clock commands from before %s",
                deleted.decisions,
                deleted.commands,
                cut.isoformat(timespec="seconds"),
            )
    made = partitions.keep_up(factory, now)
    if made:
        log.info("partitions: made the decisions' days %s", ", ".join(d.isoformat() for d in made))


async def run_retention(factory: sessionmaker[Session], days: float, interval_s: float) -> None:
    """Forever: every interval, one upkeep pass (off the event loop)."""
    while True:
        try:
            await asyncio.to_thread(upkeep_pass, factory, days, datetime.now(UTC))
        except Exception:
            log.exception("retention failed; trying again in %g s", interval_s)
        await asyncio.sleep(interval_s)

"""The decisions table's day partitions on PostgreSQL.

Migration 0012 made `decisions` a table partitioned by the UTC day its window ended in:
at 10,000 instances a day holds 864 million decisions, and dropping a day's partition
is instant where deleting its rows one by one would cost as much I/O as writing them
and leave the table bloated. This module keeps the days around now made, moves rows
that landed in the default partition (their day had none: an agent whose clock is far
off, or this upkeep not run for days) into partitions of their own, and drops the days
the retention is done with. On SQLite, whose decisions are not partitioned, it does
nothing.

Every change takes one advisory lock, so replicas sharing the database never make or
drop the same day twice, and a lock timeout, so the upkeep gives up (and tries again on
its next pass) rather than queue the writer's inserts behind it.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

PARENT = "decisions"
DEFAULT_PARTITION = "decisions_default"
_DAY = re.compile(r"^decisions_p(\d{8})$")
# An arbitrary key naming "AGFT changes the decisions' partitions" among advisory locks.
UPKEEP_LOCK = 0x41474656
# How long a change may wait for the table's lock before it gives up for this pass.
LOCK_TIMEOUT = "2s"
# Days made ahead of today: days of upkeep passes may fail before a row needs the default.
DAYS_AHEAD = 3


def day_table(day: date) -> str:
    return f"decisions_p{day:%Y%m%d}"


def is_partition(table: str) -> bool:
    """A table this module made: the schema's models do not describe it."""
    return table == DEFAULT_PARTITION or _DAY.match(table) is not None


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def is_partitioned(db: Session) -> bool:
    if db.get_bind().dialect.name != "postgresql":
        return False
    kind = db.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": PARENT}
    ).scalar()
    return kind == "p"


def days(db: Session) -> list[date]:
    """The day partitions attached to `decisions`, oldest first."""
    names = db.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": PARENT},
    ).scalars()
    found = (_DAY.match(name) for name in names)
    return sorted(datetime.strptime(m.group(1), "%Y%m%d").date() for m in found if m)


def days_in_default(db: Session) -> list[date]:
    """The UTC days of the rows waiting in the default partition."""
    rows = db.execute(
        text(f"SELECT DISTINCT (window_end AT TIME ZONE 'UTC')::date FROM {DEFAULT_PARTITION}")
    ).scalars()
    return sorted(rows)


def _lock(db: Session) -> None:
    db.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPKEEP_LOCK})


def make_day(factory: sessionmaker[Session], day: date) -> bool:
    """Make `day`'s partition, with the rows of that day the default partition holds.

    The table is made on its own and then attached: attaching locks the parent only
    against other schema changes, where CREATE TABLE ... PARTITION OF would lock the
    writer's inserts out. False: it was there already.
    """
    table, lo, hi = day_table(day), day_start(day), day_start(day + timedelta(days=1))
    with factory.begin() as db:
        _lock(db)
        if day in days(db):
            return False
        db.execute(text(f"CREATE TABLE {table} (LIKE {PARENT} INCLUDING DEFAULTS)"))
        db.execute(
            text(
                f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "
                "WHERE window_end >= :lo AND window_end < :hi RETURNING *) "
                f"INSERT INTO {table} SELECT * FROM moved"
            ),
            {"lo": lo, "hi": hi},
        )
        # Bounds as literals: DDL takes no bind parameters (the values are ours, not input).
        db.execute(
            text(
                f"ALTER TABLE {PARENT} ATTACH PARTITION {table} "
                f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
            )
        )
    return True


def drop_day(factory: sessionmaker[Session], day: date) -> bool:
    """Drop `day`'s partition and its rows. False: there was none."""
    with factory.begin() as db:
        _lock(db)
        if day not in days(db):
            return False
        db.execute(text(f"DROP TABLE {day_table(day)}"))
    return True


def around(now: datetime, behind: int = 1, ahead: int = DAYS_AHEAD) -> list[date]:
    today = now.astimezone(UTC).date()
    return [today + timedelta(days=d) for d in range(-behind, ahead + 1)]


def keep_up(factory: sessionmaker[Session], now: datetime) -> list[date]:
    """Make the days around `now` and those with rows waiting in the default partition.

    Run after the retention, which deletes the default partition's rows it is done with,
    so no day is made only to be dropped. Returns the days made.
    """
    with factory() as db:
        if not is_partitioned(db):
            return []
        have = set(days(db))
        waiting = days_in_default(db)
    wanted = sorted({*around(now), *waiting} - have)
    return [day for day in wanted if make_day(factory, day)]


def drop_before(factory: sessionmaker[Session], cut: datetime) -> list[date]:
    """Drop every day partition whose whole day ended at or before `cut`."""
    with factory() as db:
        if not is_partitioned(db):
            return []
        old = [day for day in days(db) if day_start(day + timedelta(days=1)) <= cut]
    return [day for day in old if drop_day(factory, day)]

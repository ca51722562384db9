"""Per-minute sums of the decisions, for the energy reports, and the rule that counts them.

The writer adds each batch's decisions to their minutes in the same transaction that
inserts them (`add_to_minutes`), so the sums are never behind the rows and a window sent
again after a crash, which lands in a minute summed long ago, still counts once: the
fleet stores each window once, and its minute grows by it. The sums outlive the
decisions' retention (server/store/retention.py): a report over last year reads minutes,
not windows.

What a decision adds to a sum is written once, as SQL (`window_sums`): the minutes sum
each batch with it, and server/store/energy.py sums the part-minutes at the ends of a
report's range from the decisions with it, so the two can never count differently.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Float,
    FromClause,
    Integer,
    Table,
    case,
    column,
    func,
    select,
    text,
    true,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from server.store.models import DecisionMinute

_MINUTES = cast(Table, DecisionMinute.__table__)
SUMS = (
    "windows",
    "windows_measured",
    "windows_estimated",
    "energy_j",
    "covered_energy_j",
    "default_energy_j",
    "modelled_default_j",
)
MINUTE = timedelta(minutes=1)


def minute_of(t: datetime) -> datetime:
    return t.replace(second=0, microsecond=0)


def next_minute(t: datetime) -> datetime:
    """The first whole minute at or after t."""
    start = minute_of(t)
    return start if start == t else start + MINUTE


def window_sums(source: FromClause) -> list[ColumnElement[Any]]:
    """Aggregates over decisions (the table, or a batch about to be added), in the order
    of SUMS, then the first and last window.

    A window counts; its energy, where measured; its default-clock figure beside the
    energy it covers, where both are known; and that figure again as modelled where it is
    an estimate (it differs from what was measured).
    """
    c = source.c
    estimated = c.default_energy_j.is_not(None) & c.energy_j.is_not(None)
    modelled = estimated & (c.default_energy_j != c.energy_j)
    return [
        func.count(),
        func.count(c.energy_j),
        func.coalesce(func.sum(case((estimated, 1), else_=0)), 0),
        func.coalesce(func.sum(c.energy_j), 0.0),
        func.coalesce(func.sum(case((estimated, c.energy_j), else_=0.0)), 0.0),
        func.coalesce(func.sum(case((estimated, c.default_energy_j), else_=0.0)), 0.0),
        func.coalesce(func.sum(case((modelled, c.default_energy_j), else_=0.0)), 0.0),
        func.min(c.window_end),
        func.max(c.window_end),
    ]


def _minute(dialect: str, end: ColumnElement[Any]) -> ColumnElement[Any]:
    # The minute a window ends in, as each database stores a timestamp: PostgreSQL
    # truncates; SQLite holds SQLAlchemy's "YYYY-MM-DD HH:MM:SS.ffffff" text, whose first
    # 17 characters run to the colon after the minutes.
    if dialect == "postgresql":
        return func.date_trunc("minute", end)
    return func.substr(end, 1, 17).concat("00.000000")


def _batch_source(
    db: Session, decisions: Sequence[dict[str, Any]]
) -> tuple[FromClause, dict[str, Any]]:
    """The batch's rows as a table of the columns the sums read, bound as one JSON text:
    a statement of a parameter a value costs more to parse than to run, and psycopg's
    array parameters more to dump."""
    dialect = db.get_bind().dialect
    if dialect.name == "postgresql":
        source = text(
            "SELECT * FROM json_to_recordset(CAST(:rows AS json)) "
            "AS d(instance_id integer, window_end timestamptz, energy_j float8, "
            "default_energy_j float8)"
        )
        end_text: Callable[[Any], Any] = datetime.isoformat
    else:
        source = text(
            "SELECT json_extract(value, '$.instance_id') AS instance_id, "
            "json_extract(value, '$.window_end') AS window_end, "
            "json_extract(value, '$.energy_j') AS energy_j, "
            "json_extract(value, '$.default_energy_j') AS default_energy_j "
            "FROM json_each(:rows)"
        )
        # As SQLAlchemy writes a DateTime on SQLite, so the minutes read back alike.
        processor = DateTime(timezone=True).dialect_impl(dialect).bind_processor(dialect)
        assert processor is not None
        end_text = processor
    rows = [
        {
            "instance_id": r["instance_id"],
            "window_end": end_text(r["window_end"]),
            "energy_j": r["energy_j"],
            "default_energy_j": r["default_energy_j"],
        }
        for r in decisions
    ]
    typed = source.columns(
        column("instance_id", Integer),
        column("window_end", DateTime(timezone=True)),
        column("energy_j", Float),
        column("default_energy_j", Float),
    )
    # Validation keeps energies finite; one that is not is refused here, not summed into
    # its minute for ever (the writer sets its row aside).
    return typed.subquery("batch"), {"rows": json.dumps(rows, allow_nan=False)}


def add_to_minutes(db: Session, decisions: Sequence[dict[str, Any]]) -> None:
    """Add decision rows (their column mappings) to their minutes: one INSERT ... SELECT
    with an upsert, summed by the database with the rule the reports use."""
    if not decisions:
        return
    dialect = db.get_bind().dialect.name
    postgres = dialect == "postgresql"
    batch, params = _batch_source(db, decisions)
    minute = _minute(dialect, batch.c.window_end)
    summed = (
        select(batch.c.instance_id, minute, *window_sums(batch))
        # WHERE: SQLite's upsert after a SELECT needs one to parse unambiguously.
        .where(true())
        .group_by(batch.c.instance_id, minute)
    )
    columns = ["instance_id", "minute", *SUMS, "first_window", "last_window"]
    stmt = (pg_insert if postgres else sqlite_insert)(_MINUTES).from_select(columns, summed)
    excluded = stmt.excluded
    # Two-argument min/max are LEAST/GREATEST on PostgreSQL, scalar min/max on SQLite.
    least, greatest = (func.least, func.greatest) if postgres else (func.min, func.max)
    db.execute(
        stmt.on_conflict_do_update(
            index_elements=["instance_id", "minute"],
            set_={
                **{name: _MINUTES.c[name] + excluded[name] for name in SUMS},
                "first_window": least(_MINUTES.c.first_window, excluded.first_window),
                "last_window": greatest(_MINUTES.c.last_window, excluded.last_window),
            },
        ),
        params,
    )

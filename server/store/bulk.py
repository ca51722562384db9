"""Many rows into one table: COPY on PostgreSQL, executemany on SQLite.

The writer's thread shares the GIL with the event loop, so what a row costs in Python
is what the fleet pays: COPY streams the rows as text on the transaction's own
connection, where an executemany INSERT has SQLAlchemy bind, cast and page every
parameter (a batch of 500 decisions written: 26 ms against 32 ms, docs/LOADTEST.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from sqlalchemy import JSON, Table, exc, insert
from sqlalchemy.orm import Session

from server.store.database import json_strict


def insert_rows(db: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows that all set the same columns, in the session's transaction."""
    if not rows:
        return
    if db.get_bind().dialect.name != "postgresql":
        db.execute(insert(table), list(rows))
        return
    columns = list(rows[0])
    # JSON as the engine writes it: NaN and infinity refused, as on SQLite.
    as_json = {name for name in columns if isinstance(table.c[name].type, JSON)}
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    raw = db.connection().connection.driver_connection
    assert isinstance(raw, psycopg.Connection)  # normalise_url routes to psycopg 3
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(
                    [json_strict(row[c]) if c in as_json and row[c] is not None else row[c]
                     for c in columns]
                )  # fmt: skip
    except psycopg.Error as err:
        lost = bool(raw.closed)
        if lost:  # the pool must not hand this connection out again
            db.connection().invalidate(err)
        # As SQLAlchemy's own statements raise it, so the writer tells a lost connection
        # (retried) from a row the database refuses (set aside) the same way.
        raise exc.DBAPIError.instance(
            statement, None, err, psycopg.Error, connection_invalidated=lost
        ) from err

"""decisions partitioned by UTC day on PostgreSQL (SQLite: unchanged)

At 10,000 instances a day adds 864 million decisions. Deleting them row by row at the
retention's cut costs as much I/O as writing them and bloats the table; dropping a day's
partition is instant. The server keeps the days ahead made (server/store/partitions.py);
this migration makes the parent, a default partition for rows whose day has none, and a
partition for every day the decisions already stored fall in and for the days around now.

The SQL is written out here rather than imported from the server's code: a migration
must keep doing what it did when the server's code changes.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 17:30:00

"""

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from alembic import op
from sqlalchemy import text

# revision identifiers, used by Alembic.
revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "decisions_unpartitioned"


def _bound(day: date) -> str:
    return f"'{day.isoformat()} 00:00:00+00'"


def _create_day(day: date) -> None:
    op.execute(
        f"CREATE TABLE decisions_p{day:%Y%m%d} PARTITION OF decisions "
        f"FOR VALUES FROM ({_bound(day)}) TO ({_bound(day + timedelta(days=1))})"
    )


def _set_plain_table_aside() -> None:
    # Its key and index names are free for the new table's (indexes are relations).
    op.execute(f"ALTER TABLE decisions RENAME TO {_OLD}")
    op.execute(f"ALTER TABLE {_OLD} RENAME CONSTRAINT pk_decisions TO pk_{_OLD}")
    op.execute(
        f"ALTER TABLE {_OLD} RENAME CONSTRAINT fk_decisions_instance_id_instances "
        f"TO fk_{_OLD}_instance_id_instances"
    )
    for index in ("instance_id_id", "window_end"):
        op.execute(f"ALTER INDEX ix_decisions_{index} RENAME TO ix_{_OLD}_{index}")


def _add_keys(table: str, primary_key: str) -> None:
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({primary_key})")
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_instance_id_instances "
        "FOREIGN KEY (instance_id) REFERENCES instances (id) ON DELETE CASCADE"
    )
    op.execute(f"CREATE INDEX ix_{table}_instance_id_id ON {table} (instance_id, id)")
    op.execute(f"CREATE INDEX ix_{table}_window_end ON {table} (window_end)")


def upgrade() -> None:
    """Upgrade schema."""
    if op.get_bind().dialect.name != "postgresql":
        return
    _set_plain_table_aside()
    # Same columns, order and defaults (the id keeps drawing from decisions_id_seq).
    op.execute(
        f"CREATE TABLE decisions (LIKE {_OLD} INCLUDING DEFAULTS) PARTITION BY RANGE (window_end)"
    )
    op.execute("ALTER SEQUENCE decisions_id_seq OWNED BY decisions.id")
    # A partitioned table's unique keys must hold its partition key.
    _add_keys("decisions", "id, window_end")
    op.execute("CREATE TABLE decisions_default PARTITION OF decisions DEFAULT")
    stored = op.get_bind().execute(
        text(f"SELECT DISTINCT (window_end AT TIME ZONE 'UTC')::date FROM {_OLD}")
    )
    today = datetime.now(UTC).date()
    days = {row[0] for row in stored} | {today + timedelta(days=d) for d in range(-1, 4)}
    for day in sorted(days):
        _create_day(day)
    op.execute(f"INSERT INTO decisions SELECT * FROM {_OLD}")
    op.execute(f"DROP TABLE {_OLD}")


def downgrade() -> None:
    """Downgrade schema."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"CREATE TABLE {_OLD} (LIKE decisions INCLUDING DEFAULTS)")
    op.execute(f"INSERT INTO {_OLD} SELECT * FROM decisions")
    op.execute(f"ALTER SEQUENCE decisions_id_seq OWNED BY {_OLD}.id")
    op.execute("DROP TABLE decisions")  # and every partition with it
    op.execute(f"ALTER TABLE {_OLD} RENAME TO decisions")
    _add_keys("decisions", "id")

"""Alembic environment: the URL comes from the caller's Config or AGFT_DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import text

from server.store.database import make_engine, normalise_url
from server.store.models import Base
from server.store.partitions import is_partition

config = context.config
# An arbitrary key naming "AGFT migrates" among PostgreSQL advisory locks.
MIGRATION_LOCK = 0x41474654
target_metadata = Base.metadata


def _include_name(name: str | None, type_: str, _parents: object) -> bool:
    # The decisions' day partitions are made at run time, not described by the models.
    return not (type_ == "table" and name is not None and is_partition(name))


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get(
        "AGFT_DATABASE_URL", "sqlite:///agft.db"
    )
    return normalise_url(url)


def run_migrations_offline() -> None:
    context.configure(
        url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            include_name=_include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    with engine.connect() as conn:
        # render_as_batch: SQLite cannot ALTER most things in place.
        context.configure(
            connection=conn,
            target_metadata=target_metadata,
            render_as_batch=True,
            include_name=_include_name,
        )
        with context.begin_transaction():
            if conn.dialect.name == "postgresql":
                # Replicas starting together: one migrates, the others wait here and
                # then find the schema at head (the lock lasts the transaction).
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

"""Fresh databases for tests: a SQLite file, or a new PostgreSQL database per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from server.store.database import normalise_url

POSTGRES_ENV = "AGFT_TEST_POSTGRES_URL"
REQUIRE_ENV = "AGFT_REQUIRE_POSTGRES"


def postgres_admin_url() -> str:
    """The PostgreSQL URL the tests use; skips the test (fails it under AGFT_REQUIRE_POSTGRES=1)
    when there is none."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{POSTGRES_ENV} is not set but {REQUIRE_ENV}=1: PostgreSQL tests must run")
        pytest.skip(f"set {POSTGRES_ENV} to run the PostgreSQL tests")
    return normalise_url(url)


@contextmanager
def fresh_postgres() -> Iterator[str]:
    admin = postgres_admin_url()
    name = f"agft_test_{uuid.uuid4().hex[:12]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as err:
        if os.environ.get(REQUIRE_ENV) == "1":
            raise
        pytest.skip(f"PostgreSQL not reachable: {err}")
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@contextmanager
def fresh_database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'agft.db'}"
    else:
        with fresh_postgres() as url:
            yield url

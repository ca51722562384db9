"""Replicas started together migrate one at a time: none fails on the other's tables."""

from __future__ import annotations

import subprocess
import sys
import time

from sqlalchemy import create_engine, text

from server.store.database import normalise_url
from tests.helpers.databases import fresh_postgres


def test_four_processes_migrating_one_fresh_postgres_database_all_succeed() -> None:
    with fresh_postgres() as url:
        start_at = time.time() + 8.0  # all imported by then: they migrate at once
        code = (
            "import time; from server.store.migrate import upgrade_to_head; "
            f"time.sleep(max(0.0, {start_at} - time.time())); upgrade_to_head({url!r})"
        )
        procs = [
            subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE) for _ in range(4)
        ]
        errors = [p.communicate(timeout=120)[1].decode() for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
        engine = create_engine(normalise_url(url))
        try:
            with engine.connect() as db:
                versions = db.execute(text("SELECT version_num FROM alembic_version")).all()
        finally:
            engine.dispose()
        assert len(versions) == 1

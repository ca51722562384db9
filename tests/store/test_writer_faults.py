"""The batch writer against rows the database refuses and a database that goes away.

A refused row is set aside (table, log, counter) and the rest is written; a database
that is down is retried without losing a row; shutdown is bounded and spills what it
could not write.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc, func, select
from sqlalchemy.orm import Session, sessionmaker

from server.store.database import make_engine, make_session_factory
from server.store.migrate import upgrade_to_head
from server.store.models import ClockCommand, Decision, Instance, Node, PersistFailure
from server.store.rows import AckRow, CommandRow, DecisionRow
from server.store.writer import BatchWriter, is_transient
from tests.helpers.rows import decision_row


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    upgrade_to_head(database_url)
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _instance(factory: sessionmaker[Session]) -> int:
    now = datetime.now(UTC)
    with factory.begin() as db:
        node = Node(
            node_id="n", hostname="n", agent_version="t", first_seen_at=now, last_seen_at=now
        )
        db.add(node)
        db.flush()
        instance = Instance(
            node_pk=node.id,
            name="vllm-0",
            engine="vllm",
            metrics_url="http://x/metrics",
            model_name="m",
            gpu_indices=[0],
            created_at=now,
            last_seen_at=now,
        )
        db.add(instance)
        db.flush()
        return instance.id


def _decision(instance_id: int, n: int, **extra: Any) -> DecisionRow:
    t = datetime.fromtimestamp(1_000_000 + n, UTC)
    fields = {"policy": "static", "features": {"n": float(n)}, "reason": f"row {n}", **extra}
    return decision_row(instance_id, t, window_s=0.0, **fields)


def _command(instance_id: int, n: int, **extra: Any) -> CommandRow:
    row = CommandRow(f"c{n}", instance_id, "reset", "t", datetime.now(UTC))
    return dataclasses.replace(row, **extra)


def _ack(command_id: str, ok: bool, error: str | None, at: datetime) -> AckRow:
    return AckRow(command_id, ok, error, applied=(), acked_at=at)


def _count(factory: sessionmaker[Session], model: type[Any]) -> int:
    with factory() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_refused_row_is_set_aside_and_the_rest_is_written(
    factory: sessionmaker[Session],
) -> None:
    instance_id = _instance(factory)
    writer = BatchWriter(factory, batch_max=50, interval_s=0.05)
    writer.start()
    try:
        for n in range(10):
            writer.add_decision(_decision(instance_id, n))
        # JSON has no NaN: both databases refuse this row for good.
        writer.add_decision(_decision(instance_id, 10, features={"x": math.nan}))
        # A row no column can hold: an unknown instance breaks the foreign key.
        writer.add_decision(_decision(instance_id + 999, 11))
        for n in range(12, 20):
            writer.add_decision(_decision(instance_id, n))
        await asyncio.wait_for(writer.flush(), 10)
        # Persistence goes on after the bad rows: later batches are written too.
        writer.add_decision(_decision(instance_id, 20))
        await asyncio.wait_for(writer.flush(), 10)
    finally:
        await writer.stop()

    assert _count(factory, Decision) == 19
    assert writer.rows_set_aside == 2
    with factory() as db:
        failures = db.scalars(select(PersistFailure).order_by(PersistFailure.id)).all()
    assert [f.kind for f in failures] == ["decision", "decision"]
    payloads = [json.loads(f.payload) for f in failures]
    assert {p["reason"] for p in payloads} == {"row 10", "row 11"}
    assert all(f.error for f in failures)
    assert writer.status().ok


async def test_a_nul_byte_in_free_text_cannot_stop_persistence(
    factory: sessionmaker[Session],
) -> None:
    """PostgreSQL refuses NUL in text; the row is set aside, the payload stays readable."""
    instance_id = _instance(factory)
    writer = BatchWriter(factory, batch_max=50, interval_s=0.05)
    writer.start()
    try:
        now = datetime.now(UTC)
        writer.add_command(CommandRow("c1", instance_id, "reset", "r", now))
        writer.add_ack(_ack("c1", False, "bad\x00byte", now))
        writer.add_decision(_decision(instance_id, 1))
        await asyncio.wait_for(writer.flush(), 10)
    finally:
        await writer.stop()
    assert _count(factory, ClockCommand) == 1
    assert _count(factory, Decision) == 1
    with factory() as db:
        command = db.get(ClockCommand, "c1")
        assert command is not None
        failures = db.scalars(select(PersistFailure)).all()
    if factory.kw["bind"].dialect.name == "postgresql":
        assert command.acked_at is None
        assert [f.kind for f in failures] == ["ack"]
        assert "\\u0000" in failures[0].payload
    else:  # SQLite stores NUL in text as it is: nothing to set aside
        assert command.ack_error == "bad\x00byte"
        assert failures == []


class FlakyFactory:
    """A session factory whose database is down for the first `down_for` transactions."""

    def __init__(self, real: sessionmaker[Session], down_for: int) -> None:
        self.real = real
        self.down_for = down_for
        self.attempts = 0

    def begin(self) -> AbstractContextManager[Session]:
        self.attempts += 1
        if self.attempts <= self.down_for:
            raise exc.OperationalError("INSERT", {}, ConnectionRefusedError("database is down"))
        return self.real.begin()


async def test_a_database_that_is_down_is_retried_and_nothing_is_lost(
    factory: sessionmaker[Session],
) -> None:
    instance_id = _instance(factory)
    flaky = FlakyFactory(factory, down_for=3)
    writer = BatchWriter(
        flaky,  # type: ignore[arg-type]
        batch_max=50,
        interval_s=0.02,
        retry_s=0.05,
        stuck_after_s=0.01,
    )
    writer.start()
    try:
        for n in range(30):
            writer.add_decision(_decision(instance_id, n))
        await asyncio.sleep(0.06)
        stuck = writer.status()
        assert not stuck.ok and "stuck" in stuck.detail and "database is down" in stuck.detail
        await asyncio.wait_for(writer.flush(), 10)
    finally:
        await writer.stop()
    assert flaky.attempts > 3
    assert _count(factory, Decision) == 30
    assert writer.rows_set_aside == 0
    assert writer.status().ok


async def test_shutdown_is_bounded_and_spills_what_it_could_not_write(
    factory: sessionmaker[Session], tmp_path: Path
) -> None:
    instance_id = _instance(factory)
    spill = tmp_path / "unwritten.jsonl"
    flaky = FlakyFactory(factory, down_for=10**9)  # never comes back
    writer = BatchWriter(
        flaky,  # type: ignore[arg-type]
        batch_max=4,
        interval_s=0.01,
        retry_s=0.05,
        spill_path=spill,
    )
    writer.start()
    for n in range(10):
        writer.add_decision(_decision(instance_id, n))
    loop = asyncio.get_running_loop()
    started = loop.time()
    spilled = await writer.stop(timeout_s=0.3)
    assert loop.time() - started < 2.0
    assert spilled == 10
    lines = [json.loads(line) for line in spill.read_text().splitlines()]
    assert [line["row"]["reason"] for line in lines] == [f"row {n}" for n in range(10)]
    assert {line["kind"] for line in lines} == {"decision"}


def test_transient_errors_are_told_from_bad_rows() -> None:
    down = exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
    bad = exc.IntegrityError("INSERT", {}, ValueError("foreign key"))
    assert is_transient(down)
    assert is_transient(TimeoutError())
    assert not is_transient(bad)
    assert not is_transient(exc.StatementError("bad value", "INSERT", {}, ValueError("NaN")))
    assert not is_transient(ValueError("Out of range float values are not JSON compliant"))


class SlowFactory:
    """Each transaction waits before it starts: a database slower than the load."""

    def __init__(self, real: sessionmaker[Session], delay_s: float) -> None:
        self.real = real
        self.delay_s = delay_s

    def begin(self) -> AbstractContextManager[Session]:
        import time

        time.sleep(self.delay_s)
        return self.real.begin()


async def test_a_slow_database_holds_the_producers_back_and_loses_nothing(
    factory: sessionmaker[Session],
) -> None:
    instance_id = _instance(factory)
    writer = BatchWriter(
        SlowFactory(factory, 0.05),  # type: ignore[arg-type]
        batch_max=10,
        interval_s=0.01,
        max_queued=25,
    )
    writer.start()
    waited = 0
    try:
        for n in range(200):
            writer.add_decision(_decision(instance_id, n))
            # What a stream does after each message: wait while the writer is full.
            full = writer.waiting >= 25
            await writer.wait_for_room()
            waited += full
            assert writer.waiting < 25  # bounded: reading resumes only below the mark
        await asyncio.wait_for(writer.flush(), 30)
    finally:
        await writer.stop()
    assert waited > 0  # the producer was held back
    assert _count(factory, Decision) == 200
    assert writer.rows_set_aside == 0


async def test_acks_of_a_batch_are_one_update_and_all_land(
    factory: sessionmaker[Session],
) -> None:
    instance_id = _instance(factory)
    writer = BatchWriter(factory, batch_max=500, interval_s=0.05)
    writer.start()
    now = datetime.now(UTC)
    try:
        for n in range(40):
            writer.add_command(_command(instance_id, n))
        for n in range(40):
            writer.add_ack(_ack(f"c{n}", n % 2 == 0, None if n % 2 == 0 else "refused", now))
        await asyncio.wait_for(writer.flush(), 10)
    finally:
        await writer.stop()
    with factory() as db:
        rows = db.execute(select(ClockCommand.id, ClockCommand.ack_ok)).all()
    assert len(rows) == 40
    assert all(ok == (int(cid[1:]) % 2 == 0) for cid, ok in rows)


async def test_locks_and_resets_in_one_batch_are_written_together(
    factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    # A reset sets no clock bounds: executemany over rows of different columns once failed
    # the whole batch, which then went row by row (slow, and an error line every batch).
    instance_id = _instance(factory)
    writer = BatchWriter(factory, batch_max=500, interval_s=0.05)
    writer.start()
    try:
        for n in range(30):
            if n % 3 == 0:
                writer.add_command(_command(instance_id, n))
            else:
                writer.add_command(
                    _command(
                        instance_id,
                        n,
                        kind="set",
                        min_sm_clock_mhz=345,
                        max_sm_clock_mhz=1500,
                        lease_s=5.0,
                    )
                )
        await asyncio.wait_for(writer.flush(), 10)
    finally:
        await writer.stop()
    with factory() as db:
        rows = dict(db.execute(select(ClockCommand.id, ClockCommand.max_sm_clock_mhz)).all())
    assert len(rows) == 30
    assert all((rows[f"c{n}"] is None) == (n % 3 == 0) for n in range(30))
    assert writer.rows_set_aside == 0
    assert "refuses" not in caplog.text


async def test_a_decision_the_database_refuses_in_a_bulk_write_is_set_aside_alone(
    factory: sessionmaker[Session],
) -> None:
    """On PostgreSQL decisions go by COPY: a refused row there (a NUL in its text) fails
    the batch as a row the database will never take, not as a lost connection."""
    instance_id = _instance(factory)
    writer = BatchWriter(factory, batch_max=50, interval_s=0.05)
    writer.start()
    try:
        for n in range(10):
            writer.add_decision(_decision(instance_id, n, reason="bad\x00" if n == 4 else "ok"))
        await asyncio.wait_for(writer.flush(), 10)
    finally:
        await writer.stop()
    postgres = factory.kw["bind"].dialect.name == "postgresql"
    assert _count(factory, Decision) == (9 if postgres else 10)
    assert writer.rows_set_aside == (1 if postgres else 0)
    with factory() as db:
        reasons = set(db.scalars(select(Decision.reason)))
    assert reasons == ({"ok"} if postgres else {"ok", "bad\x00"})


def test_a_connection_lost_during_a_bulk_write_is_told_transient(
    factory: sessionmaker[Session],
) -> None:
    from sqlalchemy import text

    from server.store.bulk import insert_rows

    instance_id = _instance(factory)
    rows = [_decision(instance_id, n).values() for n in range(5)]
    table = Decision.__table__
    with factory() as db:
        if db.get_bind().dialect.name != "postgresql":
            pytest.skip("COPY is PostgreSQL's")
        pid = db.scalar(text("SELECT pg_backend_pid()"))
        with factory() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(exc.DBAPIError) as raised:
            insert_rows(db, table, rows)  # type: ignore[arg-type]
    assert is_transient(raised.value)
    assert _count(factory, Decision) == 0
    # The lost connection is not handed out again: the retry writes on a fresh one.
    with factory.begin() as db:
        insert_rows(db, table, rows)  # type: ignore[arg-type]
    assert _count(factory, Decision) == 5

"""The decisions' day partitions on PostgreSQL: made by the migration and the upkeep,
filled by the writer, dropped whole by the retention, and never in the writer's way."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from server.store import partitions
from server.store.database import make_engine, make_session_factory
from server.store.energy import energy_by_instance
from server.store.migrate import alembic_config, upgrade_to_head
from server.store.models import Decision, DecisionMinute, Instance, Node
from server.store.retention import delete_before
from server.store.writer import BatchWriter
from tests.helpers.databases import fresh_postgres
from tests.helpers.rows import decision_row

pytestmark = pytest.mark.postgres

# Days far from any day a test runs on: the migration makes partitions only around now.
DAY = date(2001, 3, 4)
T0 = datetime(2001, 3, 4, 0, 0, tzinfo=UTC)


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_postgres() as url:
        yield url


@pytest.fixture
def factory(url: str) -> Iterator[sessionmaker[Session]]:
    upgrade_to_head(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def _instance(factory: sessionmaker[Session]) -> int:
    with factory.begin() as db:
        node = Node(node_id="n", hostname="n", agent_version="t", first_seen_at=T0, last_seen_at=T0)
        db.add(node)
        db.flush()
        instance = Instance(
            node_pk=node.id,
            name="vllm-0",
            engine="vllm",
            metrics_url="http://x/metrics",
            model_name="m",
            gpu_indices=[0],
            created_at=T0,
            last_seen_at=T0,
        )
        db.add(instance)
        db.flush()
        return instance.id


async def _write(factory: sessionmaker[Session], instance_id: int, ends: list[datetime]) -> None:
    writer = BatchWriter(factory, batch_max=50, interval_s=0.02)
    writer.start()
    try:
        for end in ends:
            writer.add_decision(decision_row(instance_id, end, energy_j=100.0))
        await writer.flush()
        assert writer.rows_set_aside == 0
    finally:
        await writer.stop()


def _where(factory: sessionmaker[Session]) -> dict[str, int]:
    """How many decisions each partition holds."""
    with factory() as db:
        rows = db.execute(
            text("SELECT tableoid::regclass::text, count(*) FROM decisions GROUP BY 1")
        )
        return {name: int(n) for name, n in rows}


def _ids(factory: sessionmaker[Session]) -> list[int]:
    with factory() as db:
        return list(db.scalars(select(Decision.id).order_by(Decision.id)))


def test_the_migration_partitions_the_decisions_already_stored_by_day(url: str) -> None:
    config = alembic_config(url)
    command.upgrade(config, "0011")
    engine = make_engine(url)
    factory = make_session_factory(engine)
    try:
        instance_id = _instance(factory)
        ends = [T0 + timedelta(hours=h) for h in (1, 23, 24.5, 47)]  # two days
        with factory.begin() as db:
            db.add_all(Decision(**decision_row(instance_id, end).values()) for end in ends)
        before = _ids(factory)

        command.upgrade(config, "head")

        with factory() as db:
            assert partitions.is_partitioned(db)
            made = partitions.days(db)
        assert {DAY, DAY + timedelta(days=1)} <= set(made)
        # Today's and the days ahead, so the writer's rows have a home from the start.
        assert set(partitions.around(datetime.now(UTC))) <= set(made)
        assert _ids(factory) == before
        assert _where(factory) == {"decisions_p20010304": 2, "decisions_p20010305": 2}
        # The ids go on from the same sequence.
        with factory.begin() as db:
            db.add(Decision(**decision_row(instance_id, T0 + timedelta(hours=2)).values()))
        assert _ids(factory)[-1] > before[-1]

        command.downgrade(config, "0011")
        with factory() as db:
            assert not partitions.is_partitioned(db)
            kind = db.scalar(text("SELECT relkind FROM pg_class WHERE relname = 'decisions'"))
            leftover = db.scalar(
                text("SELECT count(*) FROM pg_class WHERE relname LIKE 'decisions\\_p%'")
            )
        assert kind == "r" and leftover == 0
        assert len(_ids(factory)) == 5
        with factory.begin() as db:
            db.add(Decision(**decision_row(instance_id, T0).values()))
        assert len(_ids(factory)) == 6
    finally:
        engine.dispose()


async def test_a_window_of_a_day_without_a_partition_waits_in_the_default_until_the_upkeep(
    factory: sessionmaker[Session],
) -> None:
    instance_id = _instance(factory)
    ends = [T0 + timedelta(minutes=m, seconds=0.5) for m in range(0, 180, 3)]
    await _write(factory, instance_id, ends)
    assert _where(factory) == {partitions.DEFAULT_PARTITION: 60}
    ids = _ids(factory)
    with factory() as db:
        report = energy_by_instance(db, T0, T0 + timedelta(days=1))

    made = partitions.keep_up(factory, datetime.now(UTC))

    assert DAY in made
    assert _where(factory) == {"decisions_p20010304": 60}
    assert _ids(factory) == ids
    with factory() as db:
        assert energy_by_instance(db, T0, T0 + timedelta(days=1)) == report
    # Nothing left to do: a second pass makes nothing.
    assert partitions.keep_up(factory, datetime.now(UTC)) == []


async def test_the_retention_drops_whole_days_and_keeps_the_day_its_cut_falls_in(
    factory: sessionmaker[Session],
) -> None:
    instance_id = _instance(factory)
    for d in range(3):
        assert partitions.make_day(factory, DAY + timedelta(days=d))
    stray = [T0 - timedelta(days=10, hours=h) for h in range(5)]  # no partition: the default
    ends = [T0 + timedelta(hours=h, seconds=0.5) for h in range(0, 72, 2)]
    await _write(factory, instance_id, stray + ends)
    minutes_before = _minutes(factory)
    cut = T0 + timedelta(days=1, hours=12)

    deleted = delete_before(factory, cut, chunk=2)

    assert deleted.days_dropped == [DAY]
    assert deleted.decisions == len(stray)  # one by one: only the default's rows
    with factory() as db:
        assert partitions.days(db)[:2] == [DAY + timedelta(days=1), DAY + timedelta(days=2)]
    # The day the cut falls in is kept whole, rows before the cut too.
    assert _where(factory) == {"decisions_p20010305": 12, "decisions_p20010306": 12}
    assert _minutes(factory) == minutes_before
    assert delete_before(factory, cut) == type(deleted)(0, 0, [])


def _minutes(factory: sessionmaker[Session]) -> int:
    with factory() as db:
        return int(db.scalar(select(func.sum(DecisionMinute.windows))) or 0)


def test_replicas_keeping_up_at_once_make_each_day_once(url: str) -> None:
    upgrade_to_head(url)
    engines = [make_engine(url) for _ in range(3)]
    now = datetime(2001, 6, 1, 12, tzinfo=UTC)
    made: list[list[date]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(engines))

    def replica(factory: sessionmaker[Session]) -> None:
        start.wait()
        try:
            made.append(partitions.keep_up(factory, now))
        except BaseException as err:  # pragma: no cover - the assertion below says what
            errors.append(err)

    threads = [threading.Thread(target=replica, args=(make_session_factory(e),)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert errors == []
        every = sorted(day for days in made for day in days)
        assert every == partitions.around(now)
        with make_session_factory(engines[0])() as db:
            assert set(partitions.around(now)) <= set(partitions.days(db))
    finally:
        for e in engines:
            e.dispose()


async def test_a_day_is_made_while_the_writer_holds_an_open_insert(
    factory: sessionmaker[Session],
) -> None:
    """Making a day must not wait for the writer's transactions, nor they for it."""
    instance_id = _instance(factory)
    today = datetime.now(UTC)
    with factory() as writer_db:
        writer_db.add(Decision(**decision_row(instance_id, today).values()))
        writer_db.flush()  # an insert into today's partition, not committed
        assert partitions.make_day(factory, DAY)  # within its 2 s lock timeout
        writer_db.commit()
    with factory() as db:
        assert DAY in partitions.days(db)
    assert sum(_where(factory).values()) == 1

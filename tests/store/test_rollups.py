"""Per-minute energy sums, the reports that read them, and the retention that keeps them."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from server.store.database import make_engine, make_session_factory
from server.store.energy import InstanceEnergy, energy_by_instance
from server.store.migrate import alembic_config, upgrade_to_head
from server.store.models import ClockCommand, Decision, DecisionMinute, Instance, Node
from server.store.retention import delete_before
from server.store.rows import CommandRow, DecisionRow
from server.store.writer import BatchWriter
from tests.helpers.rows import decision_row

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    upgrade_to_head(database_url)
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


def _instances(factory: sessionmaker[Session], n: int) -> list[int]:
    with factory.begin() as db:
        node = Node(node_id="n", hostname="n", agent_version="t", first_seen_at=T0, last_seen_at=T0)
        db.add(node)
        db.flush()
        out = []
        for i in range(n):
            instance = Instance(
                node_pk=node.id,
                name=f"vllm-{i}",
                engine="vllm",
                metrics_url="http://x/metrics",
                model_name="m",
                gpu_indices=[i],
                created_at=T0,
                last_seen_at=T0,
            )
            db.add(instance)
            db.flush()
            out.append(instance.id)
        return out


def _decision(instance_id: int, at_s: float, **extra: Any) -> DecisionRow:
    return decision_row(instance_id, T0 + timedelta(seconds=at_s), **extra)


def _windows(instance_ids: list[int], seconds: range) -> list[DecisionRow]:
    """Every kind of window: measured at default clocks, measured and estimated, measured
    without an estimate, and unknown energy."""
    rows = []
    for s in seconds:
        for k, instance_id in enumerate(instance_ids):
            kind = (s + k) % 4
            energy = None if kind == 3 else 300.0 + s + 10 * k
            default = {0: energy, 1: (energy or 0) * 1.25, 2: None, 3: None}[kind]
            rows.append(_decision(instance_id, s + 0.5, energy_j=energy, default_energy_j=default))
    return rows


def _brute_force(rows: list[DecisionRow], since: datetime, until: datetime) -> dict[int, Any]:
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        if not since <= r.window_end < until:
            continue
        e = out.setdefault(
            r.instance_id,
            {"windows": 0, "measured": 0, "estimated": 0, "energy": 0.0, "covered": 0.0,
             "default": 0.0, "modelled": 0.0},
        )  # fmt: skip
        e["windows"] += 1
        if r.energy_j is not None:
            e["measured"] += 1
            e["energy"] += r.energy_j
            if r.default_energy_j is not None:
                e["estimated"] += 1
                e["covered"] += r.energy_j
                e["default"] += r.default_energy_j
                if r.default_energy_j != r.energy_j:
                    e["modelled"] += r.default_energy_j
    return out


def _assert_report(got: list[InstanceEnergy], want: dict[int, Any]) -> None:
    assert [g.instance_id for g in got] == sorted(want)
    for g in got:
        w = want[g.instance_id]
        assert (g.windows, g.windows_measured, g.windows_estimated) == (
            w["windows"],
            w["measured"],
            w["estimated"],
        )
        assert g.energy_j == pytest.approx(w["energy"])
        assert g.covered_energy_j == pytest.approx(w["covered"])
        assert g.default_energy_j == pytest.approx(w["default"])
        assert g.modelled_default_j == pytest.approx(w["modelled"])


async def _write(factory: sessionmaker[Session], rows: list[DecisionRow]) -> BatchWriter:
    writer = BatchWriter(factory, batch_max=37, interval_s=0.02)
    writer.start()
    try:
        for row in rows:
            writer.add_decision(row)
        await asyncio.wait_for(writer.flush(), 20)
    finally:
        await writer.stop()
    return writer


def _count(factory: sessionmaker[Session], model: type[Any]) -> int:
    with factory() as db:
        return int(db.scalar(select(func.count()).select_from(model)) or 0)


async def test_minutes_sum_the_decisions_written_with_them(
    factory: sessionmaker[Session],
) -> None:
    ids = _instances(factory, 3)
    rows = _windows(ids, range(0, 200))  # 3 minutes and 20 s
    await _write(factory, rows)
    assert _count(factory, DecisionMinute) == 3 * 4
    # Whole minutes only (read from the sums), and ranges cut inside minutes (the ends
    # from the decisions): both agree with the decisions themselves.
    for since_s, until_s in ((0, 180), (0, 400), (7.3, 151.9), (61, 119), (30, 31)):
        since, until = T0 + timedelta(seconds=since_s), T0 + timedelta(seconds=until_s)
        with factory() as db:
            got = energy_by_instance(db, since, until)
        _assert_report(got, _brute_force(rows, since, until))
    with factory() as db:
        whole = energy_by_instance(db, T0, T0 + timedelta(minutes=10))
    assert whole[0].first_window is not None and whole[0].last_window is not None
    first, last = whole[0].first_window, whole[0].last_window
    assert (first.replace(tzinfo=None), last.replace(tzinfo=None)) == (
        (T0 + timedelta(seconds=0.5)).replace(tzinfo=None),
        (T0 + timedelta(seconds=199.5)).replace(tzinfo=None),
    )


async def test_a_window_sent_again_late_grows_its_old_minute(
    factory: sessionmaker[Session],
) -> None:
    ids = _instances(factory, 1)
    first = _windows(ids, range(0, 120))
    await _write(factory, first)
    # A window an agent kept through an outage arrives minutes later (a crash re-send),
    # into a minute already summed; and a row the database refuses counts nowhere.
    late = [
        _decision(ids[0], 30.25, energy_j=999.0, default_energy_j=1200.0),
        _decision(ids[0], 31.25, features={"x": math.nan}, energy_j=5.0),
    ]
    writer = await _write(factory, late)
    assert writer.rows_set_aside == 1
    stored = [*first, late[0]]
    window = (T0, T0 + timedelta(minutes=2))
    with factory() as db:
        got = energy_by_instance(db, *window)
    _assert_report(got, _brute_force(stored, *window))
    with factory() as db:
        minute = db.get(DecisionMinute, (ids[0], T0))
    assert minute is not None and minute.windows == 61


async def test_retention_deletes_old_rows_and_the_reports_keep_their_minutes(
    factory: sessionmaker[Session],
) -> None:
    ids = _instances(factory, 2)
    rows = _windows(ids, range(0, 240))
    await _write(factory, rows)
    with factory.begin() as db:
        for n, at in enumerate((T0, T0 + timedelta(minutes=3))):
            db.add(ClockCommand(**CommandRow(f"c{n}", ids[0], "reset", "t", at).values()))
    window = (T0, T0 + timedelta(minutes=4))
    with factory() as db:
        before = energy_by_instance(db, *window)

    deleted = delete_before(factory, T0 + timedelta(minutes=2), chunk=50)

    assert deleted.decisions == 2 * 120 and deleted.commands == 1
    assert _count(factory, Decision) == 2 * 120
    assert _count(factory, ClockCommand) == 1
    with factory() as db:
        oldest = db.scalar(select(func.min(Decision.window_end)))
        after = energy_by_instance(db, *window)
    assert oldest is not None and oldest.replace(tzinfo=None) == (
        T0 + timedelta(minutes=2, seconds=0.5)
    ).replace(tzinfo=None)
    # Whole minutes come from their sums, kept past the decisions.
    assert after == before
    _assert_report(after, _brute_force(rows, *window))
    # Nothing left to delete: a second pass deletes nothing.
    assert delete_before(factory, T0 + timedelta(minutes=2)).decisions == 0


def test_the_migration_sums_the_decisions_already_stored(database_url: str) -> None:
    config = alembic_config(database_url)
    command.upgrade(config, "0010")
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    try:
        ids = _instances(factory, 2)
        rows = _windows(ids, range(0, 150))
        with factory.begin() as db:
            db.add_all(Decision(**r.values()) for r in rows)
        command.upgrade(config, "head")
        assert _count(factory, DecisionMinute) == 2 * 3
        for since_s, until_s in ((0, 180), (60, 120), (12.5, 140)):
            since, until = T0 + timedelta(seconds=since_s), T0 + timedelta(seconds=until_s)
            with factory() as db:
                got = energy_by_instance(db, since, until)
            _assert_report(got, _brute_force(rows, since, until))
    finally:
        engine.dispose()


async def test_the_retention_loop_outlives_a_failing_pass(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from server.store import partitions, retention

    caplog.set_level(logging.INFO, logger="server.store.retention")
    calls: list[datetime] = []
    loop = asyncio.get_running_loop()
    third = asyncio.Event()

    def flaky(_factory: object, before: datetime) -> retention.Deleted:
        calls.append(before)
        if len(calls) == 3:
            loop.call_soon_threadsafe(third.set)
        if len(calls) == 1:
            raise RuntimeError("database gone")
        return retention.Deleted(decisions=3, commands=0)

    monkeypatch.setattr(retention, "delete_before", flaky)
    monkeypatch.setattr(partitions, "keep_up", lambda _factory, _now: [])
    task = asyncio.create_task(retention.run_retention(None, 30.0, 0.01))  # type: ignore[arg-type]
    await asyncio.wait_for(third.wait(), 10)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "retention failed" in caplog.text and "database gone" in caplog.text
    assert "deleted 3 decisions" in caplog.text
    # Each pass cuts at its own time minus the retention.
    assert abs(datetime.now(UTC) - timedelta(days=30) - calls[-1]) < timedelta(minutes=1)

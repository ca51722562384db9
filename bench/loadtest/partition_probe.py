"""What the decisions' day partitions cost the writer and save the retention.

    python -m bench.loadtest.partition_probe --revision 0011   # one table
    python -m bench.loadtest.partition_probe --revision head   # day partitions

On a fresh PostgreSQL database migrated to the revision: times the writer's batch write
(500 decisions of 100 instances, called directly so the queue's timer is not in it),
then fills yesterday to `--day-rows` decisions and times the retention over that day.
The database is dropped after.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from server.store.database import make_engine, make_session_factory, normalise_url
from server.store.migrate import alembic_config
from server.store.models import Instance, Node
from server.store.retention import delete_before
from server.store.rows import DecisionRow
from server.store.writer import BatchWriter, Item, _Batch

INSTANCES = 100
WINDOWS_PER_BATCH = 5
BATCHES = 40
WARM_BATCHES = 10


def _decision(instance_id: int, end: datetime) -> DecisionRow:
    return DecisionRow(
        instance_id=instance_id,
        decided_at=end,
        window_start=end - timedelta(seconds=1),
        window_end=end,
        policy="agft",
        slo_policy_id=None,
        mode="auto",
        features={"load": 0.5, "kv": 0.2},
        clock_in_force_mhz=1410,
        clock_chosen_mhz=1410,
        reason="agft: probe",
        command_id=None,
        reward=None,
        energy_j=300.0,
        prompt_tokens=1000.0,
        generation_tokens=200.0,
        ttft_p50_s=0.05,
        ttft_p90_s=0.1,
        itl_p50_s=0.01,
        itl_p90_s=0.02,
        default_energy_j=330.0,
    )


def _instances(factory: sessionmaker[Session], at: datetime) -> list[int]:
    with factory.begin() as db:
        node = Node(node_id="n", hostname="n", agent_version="p", first_seen_at=at, last_seen_at=at)
        db.add(node)
        db.flush()
        rows = [
            Instance(
                node_pk=node.id,
                name=f"vllm-{i}",
                engine="vllm",
                metrics_url="http://x/metrics",
                model_name="m",
                gpu_indices=[i % 8],
                created_at=at,
                last_seen_at=at,
            )
            for i in range(INSTANCES)
        ]
        db.add_all(rows)
        db.flush()
        return [row.id for row in rows]


def probe(url: str, revision: str, day_rows: int) -> None:
    command.upgrade(alembic_config(url), revision)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    # Yesterday: a day the migration made a partition for.
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(1)
    ids = _instances(factory, day)
    writer = BatchWriter(factory)
    took, cpu = [], []
    second = 0
    for _ in range(BATCHES):
        items: list[Item] = []
        for _ in range(WINDOWS_PER_BATCH):
            second += 1
            end = day + timedelta(seconds=second)
            items += [("decision", _decision(i, end).values()) for i in ids]
        batch = _Batch.of(items)
        start, cpu0 = time.perf_counter(), time.process_time()
        writer._write(batch)  # the write itself, without the queue around it
        took.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu0)
    batch_ms = statistics.median(took[WARM_BATCHES:]) * 1000
    # The CPU of this process alone: what the write takes from the server's event loop
    # (its thread holds the GIL meanwhile), the database's own work left out.
    cpu_ms = statistics.median(cpu[WARM_BATCHES:]) * 1000
    print(f"{revision}: a batch of {INSTANCES * WINDOWS_PER_BATCH} decisions, median of "
          f"{BATCHES - WARM_BATCHES}: {batch_ms:.1f} ms, {cpu_ms:.1f} ms of it this "
          "process's CPU")  # fmt: skip
    with factory.begin() as db:  # the rest of the day, in SQL: its speed is not measured
        db.execute(
            text(
                "INSERT INTO decisions (instance_id, decided_at, window_start, window_end, "
                "policy, features, reason, mode) SELECT :instance, "
                ":day + g * interval '1 millisecond', :day + g * interval '1 millisecond', "
                ":day + g * interval '1 millisecond', 'agft', '{}', 'r', 'auto' "
                "FROM generate_series(1, :n) AS g"
            ),
            {"instance": ids[0], "day": day, "n": day_rows},
        )
    total = day_rows + BATCHES * WINDOWS_PER_BATCH * INSTANCES
    start = time.perf_counter()
    deleted = delete_before(factory, day + timedelta(days=1))
    wall = time.perf_counter() - start
    print(f"{revision}: the retention of a day of {total:,} decisions: {wall:.2f} s "
          f"({deleted.decisions:,} deleted one by one, days dropped: "
          f"{[d.isoformat() for d in deleted.days_dropped]})")  # fmt: skip
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--revision", default="head", help="Alembic revision (0011: one table)")
    parser.add_argument("--day-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--database-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="an admin URL: a database is made beside it for the probe and dropped after",
    )
    args = parser.parse_args()
    admin = create_engine(normalise_url(args.database_url), isolation_level="AUTOCOMMIT")
    name = f"agft_probe_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = args.database_url.rpartition("/")[0]
    try:
        probe(f"{base}/{name}", args.revision, args.day_rows)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()

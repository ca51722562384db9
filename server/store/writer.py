"""Batched persistence: decisions, commands and acks are written in few transactions.

The event loop only enqueues; a background task drains the queue and writes each
batch in a worker thread. Failures are told apart:

- transient (the database is down, a connection dropped, a lock timed out): the
  same rows are retried with capped backoff, so nothing accepted is lost while
  the process lives;
- permanent (a row the database will never take): the batch is written row by
  row, and each row that still fails is set aside in `persist_failures` (with the
  error, logged and counted) while the rest are written. One bad row never stops
  persistence for everyone.

`status()` says when the writer is stuck, for /healthz. `stop()` is bounded: what
cannot be written in time is appended to a spill file named in the log, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, exc, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from server.store.bulk import insert_rows
from server.store.models import ClockCommand, Decision, Node, PersistFailure
from server.store.policy_states import upsert_policy_states
from server.store.rollups import add_to_minutes
from server.store.rows import (
    AckRow,
    CommandRow,
    DecisionRow,
    PolicyStateRow,
    RecoveredAck,
    StoredMark,
)

log = logging.getLogger(__name__)

# The tables behind the models, for Core statements.
_COMMANDS = cast(Table, ClockCommand.__table__)
_DECISIONS = cast(Table, Decision.__table__)

# Order of writing: decisions and acks refer to commands; a node's stored mark comes
# last, in the same transaction as the windows it vouches for.
KINDS = ("command", "decision", "ack", "recovered_ack", "policy_state", "stored")
# Rows arrive typed (server/store/rows.py) and queue as their column mappings: what the
# Core statements bind, and what a spill file or a set-aside row keeps.
Item = tuple[str, dict[str, Any]]
# Told, on the event loop, the stored marks of each batch once it is committed.
StoredListener = Callable[[list[StoredMark]], None]


def is_transient(err: BaseException) -> bool:
    """Would the same write succeed later? Connection and lock trouble, not bad rows."""
    if isinstance(err, exc.DBAPIError) and err.connection_invalidated:
        return True
    return isinstance(
        err,
        exc.OperationalError
        | exc.InterfaceError
        | exc.TimeoutError
        | exc.DisconnectionError
        | ConnectionError
        | TimeoutError,
    )


@dataclass(slots=True)
class _Batch:
    commands: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    # Whole command rows rebuilt from acks a replayed window carried: stored if missing.
    recovered_acks: list[dict[str, Any]] = field(default_factory=list)
    # Keyed by (instance_id, policy): only the newest state of a batch needs writing.
    policy_states: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    # Keyed by node: marks come in window order, so the last one holds.
    stored: dict[int, dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return (
            len(self.commands)
            + len(self.decisions)
            + len(self.acks)
            + len(self.recovered_acks)
            + len(self.policy_states)
            + len(self.stored)
        )

    def add(self, item: Item) -> None:
        kind, row = item
        if kind == "policy_state":
            self.policy_states[(row["instance_id"], row["policy"])] = row
        elif kind == "stored":
            self.stored[row["id"]] = row
        else:
            {
                "command": self.commands,
                "decision": self.decisions,
                "ack": self.acks,
                "recovered_ack": self.recovered_acks,
            }[kind].append(row)

    def items(self) -> list[Item]:
        return (
            [("command", r) for r in self.commands]
            + [("decision", r) for r in self.decisions]
            + [("ack", r) for r in self.acks]
            + [("recovered_ack", r) for r in self.recovered_acks]
            + [("policy_state", r) for r in self.policy_states.values()]
            + [("stored", r) for r in self.stored.values()]
        )

    @classmethod
    def of(cls, items: list[Item]) -> _Batch:
        batch = cls()
        for item in items:
            batch.add(item)
        return batch


ACK_COLUMNS = ("ack_ok", "ack_error", "applied", "acked_at")


def _store_recovered_acks(db: Session, rows: list[dict[str, Any]]) -> None:
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(_COMMANDS)
    db.execute(
        stmt.on_conflict_do_update(
            index_elements=[_COMMANDS.c.id],
            set_={name: stmt.excluded[name] for name in ACK_COLUMNS},
            where=_COMMANDS.c.acked_at.is_(None),  # an ack stored already stays as it is
        ),
        rows,
    )


def _same_columns(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by the columns they set, in first-seen order of those sets."""
    groups: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(frozenset(row), []).append(row)
    return list(groups.values())


@dataclass(frozen=True, slots=True)
class WriterStatus:
    ok: bool
    detail: str  # "ok", or what is wrong, in words
    queued: int
    oldest_queued_s: float | None
    rows_written: int
    rows_set_aside: int
    last_error: str | None


def payload_text(row: dict[str, Any]) -> str:
    """A row as JSON text any database will store: whatever it holds, made printable."""
    text = json.dumps(row, default=str, allow_nan=True, sort_keys=True)
    return text.replace("\x00", "\\u0000")


class BatchWriter:
    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        batch_max: int = 500,
        interval_s: float = 0.2,
        retry_s: float = 1.0,
        retry_max_s: float = 10.0,
        stuck_after_s: float = 30.0,
        spill_path: Path | None = None,
        max_queued: int = 200_000,
        on_stored: StoredListener | None = None,
    ) -> None:
        self._factory = factory
        self.on_stored = on_stored
        self._batch_max = batch_max
        self._interval_s = interval_s
        self._retry_s = retry_s
        self._retry_max_s = retry_max_s
        self._stuck_after_s = stuck_after_s
        self._spill_path = spill_path
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        # Backpressure: past max_queued rows the streams stop reading (wait_for_room), so
        # HTTP/2 flow control slows the agents down instead of the queue growing without
        # bound. Producers never block and never drop: a row in hand is always queued.
        self._max_queued = max_queued
        self._room = asyncio.Event()
        self._room.set()
        self._full = asyncio.Event()  # a whole batch is waiting: write now
        # Enqueue times, oldest first, so health can say how long the oldest row waits.
        self._enqueued_at: deque[float] = deque()
        self._in_flight: list[Item] = []
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.rows_written = 0
        self.rows_set_aside = 0
        self.last_error: str | None = None

    # -- producers (event loop, never block) --------------------------------------
    def add_command(self, row: CommandRow) -> None:
        self._put("command", row.values())

    def add_decision(self, row: DecisionRow) -> None:
        self._put("decision", row.values())

    def add_ack(self, row: AckRow) -> None:
        self._put("ack", row.values())

    def add_recovered_ack(self, row: RecoveredAck) -> None:
        """A whole command row from a replayed ack: inserted if the command is missing, its
        ack added if the command has none, nothing changed otherwise."""
        self._put("recovered_ack", row.values())

    def add_policy_state(self, row: PolicyStateRow) -> None:
        self._put("policy_state", row.values())

    def add_stored_mark(self, mark: StoredMark) -> None:
        """After a window's rows: once this is committed, so are they (the queue is FIFO
        and every batch one transaction), and on_stored hears of it."""
        self._put("stored", mark.values())

    def _put(self, kind: str, row: dict[str, Any]) -> None:
        self._idle.clear()
        self._enqueued_at.append(time.monotonic())
        self._queue.put_nowait((kind, row))
        size = self._queue.qsize()
        if size >= self._batch_max:
            self._full.set()
        if size >= self._max_queued:
            self._room.clear()

    @property
    def waiting(self) -> int:
        """Rows queued and not yet taken into a batch."""
        return self._queue.qsize()

    async def wait_for_room(self) -> None:
        """Return once the queue is below max_queued (at once, mostly)."""
        while self._queue.qsize() >= self._max_queued:
            self._room.clear()
            await self._room.wait()

    # -- health ----------------------------------------------------------------------
    def status(self) -> WriterStatus:
        queued = self._queue.qsize() + len(self._in_flight)
        oldest = time.monotonic() - self._enqueued_at[0] if self._enqueued_at else None
        detail = "ok"
        if self._task is not None and self._task.done():
            detail = "the writer task has stopped"
        elif oldest is not None and oldest > self._stuck_after_s:
            detail = (
                f"stuck: {queued} rows waiting, the oldest for {oldest:.0f} s"
                f" (last error: {self.last_error or 'none'})"
            )
        return WriterStatus(
            ok=detail == "ok",
            detail=detail,
            queued=queued,
            oldest_queued_s=oldest,
            rows_written=self.rows_written,
            rows_set_aside=self.rows_set_aside,
            last_error=self.last_error,
        )

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="agft-batch-writer")

    async def flush(self) -> None:
        """Wait until everything enqueued so far is written."""
        while not (self._queue.empty() and self._idle.is_set()):
            await self._idle.wait()

    async def stop(self, timeout_s: float = 10.0) -> int:
        """Flush for at most timeout_s, then stop; returns how many rows were spilled."""
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except TimeoutError:
            log.error("writer could not flush within %.0f s (%s)", timeout_s, self.last_error)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        left = list(self._in_flight)
        self._in_flight = []
        while not self._queue.empty():
            left.append(self._queue.get_nowait())
        if left:
            self._spill(left)
        return len(left)

    def _spill(self, items: list[Item]) -> None:
        if self._spill_path is None:
            log.error("%d accepted rows were never written (no spill file configured)", len(items))
            return
        try:
            with self._spill_path.open("a", encoding="utf-8") as out:
                for kind, row in items:
                    out.write(json.dumps({"kind": kind, "row": row}, default=str) + "\n")
        except OSError as err:
            log.error(
                "%d rows unwritten; cannot spill them to %s: %s", len(items), self._spill_path, err
            )
            return
        log.error(
            "%d accepted rows could not reach the database before shutdown; appended to %s",
            len(items),
            self._spill_path,
        )

    # -- consumer ------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            self._idle.clear()
            items = [first]
            if self._queue.qsize() < self._batch_max - 1:
                # Gather for up to interval_s unless a whole batch is waiting sooner (one
                # timer per batch: a wait per row costs more than the rows' writing).
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._interval_s)
            while len(items) < self._batch_max and not self._queue.empty():
                items.append(self._queue.get_nowait())
            if self._queue.qsize() < self._max_queued:
                self._room.set()
            self._in_flight = items
            await self._write_until_done(items)
            self._in_flight = []
            self._tell_stored(items)
            for _ in items:
                self._enqueued_at.popleft()
            if self._queue.empty():
                self._idle.set()

    def _tell_stored(self, items: list[Item]) -> None:
        marks = [
            StoredMark(row["id"], row["agent_boot_id"], row["windows_stored_seq"])
            for kind, row in items
            if kind == "stored" and not row.get("refused")
        ]
        if not marks or self.on_stored is None:
            return
        try:
            self.on_stored(marks)
        except Exception:  # the listener's trouble must not stop persistence
            log.exception("telling agents what is stored failed")

    async def _write_until_done(self, items: list[Item]) -> None:
        delay = self._retry_s
        pending = items
        while pending:
            try:
                await asyncio.to_thread(self._write, _Batch.of(pending))
                self.rows_written += len(pending)
                self.last_error = None
                return
            except Exception as err:
                self.last_error = f"{type(err).__name__}: {str(err)[:300]}"
                if is_transient(err):
                    log.warning("persisting %d rows failed (%s); retrying", len(pending), err)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._retry_max_s)
                    continue
                log.error(
                    "a batch of %d rows holds a row the database refuses: %s", len(pending), err
                )
            # One row at a time: the good ones are written, the bad ones set aside.
            try:
                pending = await asyncio.to_thread(self._write_each, pending)
            except Exception as err:  # transient trouble mid-way: retry what is left
                self.last_error = f"{type(err).__name__}: {str(err)[:300]}"
                log.warning("row-by-row write interrupted (%s); retrying", err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry_max_s)

    def _write_each(self, items: list[Item]) -> list[Item]:
        """Write items one per transaction; returns [] or raises on transient trouble.

        Rows the database refuses for good are set aside. Items written are removed
        from `items` as we go, so a retry after a transient error repeats none.
        """
        ordered = _Batch.of(items).items()
        for i, item in enumerate(ordered):
            try:
                self._write(_Batch.of([item]))
                self.rows_written += 1
            except Exception as err:
                if is_transient(err):
                    del ordered[:i]
                    items[:] = ordered
                    raise
                self._set_aside(item, err)
        return []

    def _set_aside(self, item: Item, err: BaseException) -> None:
        kind, row = item
        if kind == "stored":
            # Never vouch for windows on a mark that did not land: they are sent again.
            row["refused"] = True
        error = f"{type(err).__name__}: {err}".replace("\x00", "\\0")[:1024]
        log.error("setting aside a %s row the database refuses: %s", kind, error)
        self.rows_set_aside += 1
        try:
            with self._factory.begin() as db:
                db.add(
                    PersistFailure(
                        kind=kind,
                        error=error,
                        payload=payload_text(row),
                        failed_at=datetime.now(UTC),
                    )
                )
        except Exception as set_aside_err:
            if is_transient(set_aside_err):
                self.rows_set_aside -= 1
                raise
            # Never loop on it: the log line above holds the row's kind and error.
            log.error("cannot store the set-aside row either: %s", set_aside_err)

    def _write(self, batch: _Batch) -> None:
        # Commands first: decisions and acks refer to them.
        with self._factory.begin() as db:
            # Core statements, executemany: the ORM's bulk path costs more Python per row
            # than the database takes to store it, and the writer shares the GIL with the
            # event loop.
            # executemany binds every row to the first row's columns: a reset (no clock
            # bounds) beside a lock made the whole batch fail and go row by row.
            for rows in _same_columns(batch.commands):
                insert_rows(db, _COMMANDS, rows)
            for rows in _same_columns(batch.decisions):
                insert_rows(db, _DECISIONS, rows)
            # Their minutes grow in the same transaction: a report never sees one without
            # the other.
            add_to_minutes(db, batch.decisions)
            for rows in _same_columns(batch.acks):
                # One executemany UPDATE by primary key for the whole batch's acks.
                db.execute(update(ClockCommand), rows)
            if batch.recovered_acks:
                _store_recovered_acks(db, batch.recovered_acks)
            upsert_policy_states(db, list(batch.policy_states.values()))
            if batch.stored:
                db.execute(update(Node), list(batch.stored.values()))

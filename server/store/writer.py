"""Batched persistence: decisions, commands and acks are written in few transactions.

The event loop only enqueues; a background task drains the queue and writes each
batch in a worker thread. A batch that fails to write is retried, not dropped:
nothing the server accepted is lost while the process lives, and shutdown flushes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session, sessionmaker

from server.store.models import ClockCommand, Decision
from server.store.policy_states import upsert_policy_state

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Batch:
    commands: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    acks: list[dict[str, Any]] = field(default_factory=list)
    # Keyed by (instance_id, policy): only the newest state of a batch needs writing.
    policy_states: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.commands) + len(self.decisions) + len(self.acks) + len(self.policy_states)


class BatchWriter:
    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        batch_max: int = 500,
        interval_s: float = 0.2,
        retry_s: float = 1.0,
    ) -> None:
        self._factory = factory
        self._batch_max = batch_max
        self._interval_s = interval_s
        self._retry_s = retry_s
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.rows_written = 0

    # -- producers (event loop, never block) --------------------------------------
    def add_command(self, row: dict[str, Any]) -> None:
        self._put("command", row)

    def add_decision(self, row: dict[str, Any]) -> None:
        self._put("decision", row)

    def add_ack(self, row: dict[str, Any]) -> None:
        self._put("ack", row)

    def add_policy_state(self, row: dict[str, Any]) -> None:
        self._put("policy_state", row)

    def _put(self, kind: str, row: dict[str, Any]) -> None:
        self._idle.clear()
        self._queue.put_nowait((kind, row))

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="agft-batch-writer")

    async def flush(self) -> None:
        """Wait until everything enqueued so far is written."""
        while not (self._queue.empty() and self._idle.is_set()):
            await self._idle.wait()

    async def stop(self) -> None:
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- consumer ------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            self._idle.clear()
            batch = _Batch()
            self._add(batch, first)
            deadline = asyncio.get_running_loop().time() + self._interval_s
            while len(batch) < self._batch_max:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except TimeoutError:
                    break
                self._add(batch, item)
            while True:
                try:
                    await asyncio.to_thread(self._write, batch)
                    self.rows_written += len(batch)
                    break
                except Exception:
                    log.exception("persisting %d rows failed; retrying", len(batch))
                    await asyncio.sleep(self._retry_s)
            if self._queue.empty():
                self._idle.set()

    @staticmethod
    def _add(batch: _Batch, item: tuple[str, dict[str, Any]]) -> None:
        kind, row = item
        if kind == "policy_state":
            batch.policy_states[(row["instance_id"], row["policy"])] = row
            return
        {"command": batch.commands, "decision": batch.decisions, "ack": batch.acks}[kind].append(
            row
        )

    def _write(self, batch: _Batch) -> None:
        # Commands first: decisions and acks refer to them.
        with self._factory.begin() as db:
            if batch.commands:
                db.execute(insert(ClockCommand), batch.commands)
            if batch.decisions:
                db.execute(insert(Decision), batch.decisions)
            for ack in batch.acks:
                command_id = ack["id"]
                values = {k: v for k, v in ack.items() if k != "id"}
                db.execute(update(ClockCommand).where(ClockCommand.id == command_id).values(values))
            for state in batch.policy_states.values():
                upsert_policy_state(db, state)

"""Which replica controls which node: node leases held, waited for, renewed, given back.

Several server replicas share one database; each node (its agent's one stream, and so
every GPU on it) is controlled by exactly one of them at a time. A replica takes a
node's lease at Hello, renews all its nodes' leases every third of the lease, and gives
them back at disconnect. A node whose replica died is taken over once its lease runs
out: a Hello that finds the lease held waits that long rather than bouncing the agent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from sqlalchemy.orm import Session, sessionmaker

from server.store.node_leases import give_back_nodes, renew_nodes, take_node

log = logging.getLogger(__name__)


class NodeRefusedError(Exception):
    """Hello from a node this stream may not speak for; code is a grpc.StatusCode name."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class NodeOwnership:
    def __init__(self, factory: sessionmaker[Session], replica_id: str, lease_s: float) -> None:
        self._factory = factory
        self.replica_id = replica_id
        self.lease_s = lease_s
        self.last_renewed = time.monotonic()

    @property
    def renew_every_s(self) -> float:
        return self.lease_s / 3

    async def take(self, node_id: str) -> None:
        """Hold the node's lease, waiting out one that another replica let run out;
        NodeRefusedError when another replica keeps renewing it."""
        deadline = time.monotonic() + self.lease_s + 1.0
        while True:
            held = await asyncio.to_thread(
                take_node, self._factory, node_id, self.replica_id, self.lease_s, _now()
            )
            if held is None:
                return
            holder, until = held
            if time.monotonic() >= deadline:
                raise NodeRefusedError(
                    "UNAVAILABLE",
                    f"node {node_id!r} is controlled by server replica {holder!r} (its lease"
                    f" runs to {until.isoformat(timespec='seconds')}); connect to that one",
                )
            # Wake when the holder's lease runs out (and no later than the deadline): one
            # read per renewal it makes, not a poll per Hello every fraction of a second.
            aware = until if until.tzinfo is not None else until.replace(tzinfo=UTC)  # SQLite
            left = (aware - _now()).total_seconds()
            await asyncio.sleep(
                max(0.05, min(left + 0.05, deadline - time.monotonic(), self.lease_s / 3))
            )

    async def renew(self, node_ids: list[str]) -> set[str]:
        """The nodes of node_ids this replica still holds after renewing. Raises when the
        database cannot be reached: the caller stops deciding once that lasts a lease."""
        held = await asyncio.to_thread(
            renew_nodes, self._factory, node_ids, self.replica_id, self.lease_s, _now()
        )
        self.last_renewed = time.monotonic()
        return held

    def renewal_overdue(self) -> bool:
        """No renewal for a whole lease: another replica may hold our nodes by now."""
        return time.monotonic() - self.last_renewed > self.lease_s

    async def give_back(self, node_ids: list[str]) -> None:
        try:
            await asyncio.to_thread(give_back_nodes, self._factory, node_ids, self.replica_id)
        except Exception as err:  # it runs out on its own: nothing is unsafe meanwhile
            log.warning("could not give back node leases %s: %s", node_ids[:5], err)


def _now() -> datetime:
    return datetime.now(UTC)

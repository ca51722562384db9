"""Upserting what a node says about itself: its GPUs and serving instances."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from agft.labels import effective_labels
from server.store.inventory import NodeInventory
from server.store.models import Gpu, Instance, Node


@dataclass(frozen=True, slots=True)
class RegisteredInstance:
    id: int
    labels: dict[str, str]
    mode: str
    pinned_sm_clock_mhz: int | None


@dataclass(frozen=True, slots=True)
class Registered:
    node_pk: int
    instances: dict[str, RegisteredInstance]
    # The newest window of this boot of the agent already stored (0: none).
    windows_stored_seq: int = 0

    @property
    def instance_ids(self) -> dict[str, int]:
        return {name: i.id for name, i in self.instances.items()}


def register_node(factory: sessionmaker[Session], hello: NodeInventory) -> Registered:
    now = datetime.now(UTC)
    with factory.begin() as db:
        node = db.scalar(select(Node).where(Node.node_id == hello.node_id))
        if node is None:
            node = Node(node_id=hello.node_id, first_seen_at=now)
            db.add(node)
        node.hostname = hello.hostname
        node.agent_version = hello.agent_version
        node.connected = True
        node.last_seen_at = now
        db.flush()

        gpus = {g.index: g for g in db.scalars(select(Gpu).where(Gpu.node_pk == node.id))}
        for g in hello.gpus:
            row = gpus.get(g.index) or Gpu(node_pk=node.id, index=g.index)
            row.uuid = g.uuid
            row.name = g.name
            row.supported_sm_clocks_mhz = list(g.supported_sm_clocks_mhz)
            row.supported_memory_clocks_mhz = list(g.supported_memory_clocks_mhz)
            row.default_sm_clock_mhz = g.default_sm_clock_mhz
            row.default_memory_clock_mhz = g.default_memory_clock_mhz
            row.power_limit_mw = g.power_limit_mw
            row.updated_at = now
            db.add(row)

        existing = {
            i.name: i for i in db.scalars(select(Instance).where(Instance.node_pk == node.id))
        }
        registered: dict[str, RegisteredInstance] = {}
        rows: dict[str, Instance] = {}
        for inst in hello.instances:
            irow = existing.get(inst.name) or Instance(
                node_pk=node.id, name=inst.name, created_at=now
            )
            irow.engine = inst.engine
            irow.labels = effective_labels(
                dict(inst.labels), node=hello.node_id, engine=irow.engine, model=inst.model_name
            )
            irow.metrics_url = inst.metrics_url
            irow.model_name = inst.model_name
            irow.gpu_indices = list(inst.gpu_indices)
            irow.monitor_only_reason = hello.monitor_only_reason(inst) or None
            irow.last_seen_at = now
            db.add(irow)
            rows[inst.name] = irow
        # One flush for the whole node: a reconnect (the common Hello, and every node a
        # failover moves) updates its rows in one round of statements, not one per row.
        db.flush()
        for name, irow in rows.items():
            registered[name] = RegisteredInstance(
                id=irow.id,
                labels=dict(irow.labels),
                # A new row's defaults are applied on flush; say them rather than read None.
                mode=irow.mode or "auto",
                pinned_sm_clock_mhz=irow.pinned_sm_clock_mhz,
            )
        stored = 0
        if hello.boot_id and node.agent_boot_id == hello.boot_id:
            stored = node.windows_stored_seq or 0
        return Registered(node_pk=node.id, instances=registered, windows_stored_seq=stored)


def set_monitor_only(factory: sessionmaker[Session], reasons: dict[int, str | None]) -> None:
    """Record, per instance id, why it is monitor-only now (None: controllable again)."""
    with factory.begin() as db:
        for instance_id, reason in reasons.items():
            db.execute(
                update(Instance)
                .where(Instance.id == instance_id)
                .values(monitor_only_reason=reason)
            )


def mark_disconnected(factory: sessionmaker[Session], node_pk: int) -> None:
    with factory.begin() as db:
        db.execute(
            update(Node)
            .where(Node.id == node_pk)
            .values(connected=False, last_seen_at=datetime.now(UTC))
        )


def touch_seen(
    factory: sessionmaker[Session], nodes: dict[int, datetime], instances: dict[int, datetime]
) -> None:
    """last_seen_at follows telemetry, batched (one statement per table)."""
    with factory.begin() as db:
        if nodes:
            db.execute(
                update(Node).execution_options(synchronize_session=False),
                [{"id": pk, "last_seen_at": at} for pk, at in nodes.items()],
            )
        db.execute(
            update(Instance).execution_options(synchronize_session=False),
            [{"id": pk, "last_seen_at": at} for pk, at in instances.items()],
        )

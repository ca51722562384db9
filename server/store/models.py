"""SQLAlchemy models. Alembic migrations (migrations/) are the only way this schema is made."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names so migrations are identical on PostgreSQL and SQLite.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only autoincrements INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Json = JSON()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[str] = mapped_column(String(255), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    agent_version: Mapped[str] = mapped_column(String(64))
    connected: Mapped[bool] = mapped_column(Boolean, default=False)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The agent process (its boot id) whose windows are stored through windows_stored_seq:
    # written in the same transaction as those windows, so a restarted server tells a
    # reconnecting agent exactly which of its buffered windows it still has to send.
    agent_boot_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    windows_stored_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class Gpu(Base):
    __tablename__ = "gpus"
    __table_args__ = (UniqueConstraint("node_pk", "index", name="uq_gpus_node_pk_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_pk: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer)
    uuid: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(255))
    supported_sm_clocks_mhz: Mapped[list[int]] = mapped_column(Json)
    supported_memory_clocks_mhz: Mapped[list[int]] = mapped_column(Json)
    default_sm_clock_mhz: Mapped[int] = mapped_column(Integer)
    default_memory_clock_mhz: Mapped[int] = mapped_column(Integer)
    power_limit_mw: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SloPolicy(Base):
    """Latency objectives, the promises kept besides them, and the controller, for a scope.

    scope is "fleet" (every instance), "pool" (instances whose labels carry all of
    `selector`) or "instance" (one instance). The most specific scope wins; scope_key
    makes "one policy per scope" a database constraint on both engines.
    """

    __tablename__ = "slo_policies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    scope_key: Mapped[str] = mapped_column(String(2048), unique=True)
    selector: Mapped[dict[str, str]] = mapped_column(Json)
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), nullable=True
    )
    ttft_s: Mapped[float] = mapped_column(Float)
    tpot_s: Mapped[float] = mapped_column(Float)
    percentile: Mapped[float] = mapped_column(Float)
    # NULL: no cap, only the SLO counts.
    max_p90_slowdown: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_attainment_loss_points: Mapped[float | None] = mapped_column(Float, nullable=True)
    controller: Mapped[str] = mapped_column(String(32))
    controller_tunables: Mapped[dict[str, Any]] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("node_pk", "name", name="uq_instances_node_pk_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_pk: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    engine: Mapped[str] = mapped_column(String(32))
    metrics_url: Mapped[str] = mapped_column(String(1024))
    model_name: Mapped[str] = mapped_column(String(255))
    gpu_indices: Mapped[list[int]] = mapped_column(Json)
    # What the agent's config says about the instance (model, pool, region, ...) plus
    # node, engine and model as given in Hello: what pool policies select on.
    labels: Mapped[dict[str, str]] = mapped_column(Json, default=dict)
    # auto | observe | pinned | off, set by an admin; pinned holds pinned_sm_clock_mhz.
    mode: Mapped[str] = mapped_column(String(16), default="auto")
    pinned_sm_clock_mhz: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mode_note: Mapped[str | None] = mapped_column(String(255), nullable=True)
    mode_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    mode_changed_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Why the agent cannot lock this instance's clocks (NULL: it can): no permission,
    # MIG, unsupported, a refused lock. Such an instance is decided for, never commanded.
    monitor_only_reason: Mapped[str | None] = mapped_column(String(1024), nullable=True)


class Decision(Base):
    """One row per controller decision: what it saw, what was in force, what it chose."""

    __tablename__ = "decisions"
    __table_args__ = (
        Index("ix_decisions_instance_id_id", "instance_id", "id"),
        # Reports of a time range and the retention's deletes read by window end.
        Index("ix_decisions_window_end", "window_end"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    window_end: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    policy: Mapped[str] = mapped_column(String(64))
    # The SLO policy and mode the decision was taken under (NULL policy: server default).
    slo_policy_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mode: Mapped[str] = mapped_column(String(16), default="auto")
    features: Mapped[dict[str, Any]] = mapped_column(Json)
    # NULL clock means "default clocks / no lock".
    clock_in_force_mhz: Mapped[int | None] = mapped_column(Integer, nullable=True)
    clock_chosen_mhz: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(String(255))
    command_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reward: Mapped[float | None] = mapped_column(Float, nullable=True)
    # NULL measurements mean "unknown", never zero.
    energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    # What the window would have used at default clocks: energy_j itself when it ran at
    # default clocks, the estimator's figure otherwise (server/energy/estimator.py).
    default_energy_j: Mapped[float | None] = mapped_column(Float, nullable=True)
    prompt_tokens: Mapped[float | None] = mapped_column(Float, nullable=True)
    generation_tokens: Mapped[float | None] = mapped_column(Float, nullable=True)
    ttft_p50_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    ttft_p90_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    itl_p50_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    itl_p90_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class DecisionMinute(Base):
    """Per instance and minute, the sums the energy reports read: kept past the decisions'
    retention, and written in the same transaction as the decisions they add up."""

    __tablename__ = "decision_minutes"

    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    minute: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    windows: Mapped[int] = mapped_column(Integer)
    windows_measured: Mapped[int] = mapped_column(Integer)  # with a measured energy
    windows_estimated: Mapped[int] = mapped_column(Integer)  # with a default-clock figure
    energy_j: Mapped[float] = mapped_column(Float)  # over the measured windows
    # Over the estimated windows only: what was used, and what default clocks would have.
    covered_energy_j: Mapped[float] = mapped_column(Float)
    default_energy_j: Mapped[float] = mapped_column(Float)
    modelled_default_j: Mapped[float] = mapped_column(Float)
    first_window: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_window: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ClockCommand(Base):
    __tablename__ = "clock_commands"
    __table_args__ = (
        Index("ix_clock_commands_instance_id_issued_at", "instance_id", "issued_at"),
        Index("ix_clock_commands_issued_at", "issued_at"),  # the retention's deletes
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # "set" or "reset"
    min_sm_clock_mhz: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_sm_clock_mhz: Mapped[int | None] = mapped_column(Integer, nullable=True)
    memory_clock_mhz: Mapped[int | None] = mapped_column(Integer, nullable=True)
    lease_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    reason: Mapped[str] = mapped_column(String(255))
    issued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    acked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ack_ok: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    ack_error: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    applied: Mapped[list[dict[str, Any]] | None] = mapped_column(Json, nullable=True)


class PolicyState(Base):
    """A policy's learned state per instance (JSON, never pickle), so learning survives restarts."""

    __tablename__ = "policy_states"

    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    policy: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(Json)
    decisions: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PersistFailure(Base):
    """A row the writer could not store however often it tried, set aside for an admin.

    One bad row must never stop persistence for everyone: it lands here (with the
    database's error) and the rest of its batch is written.
    """

    __tablename__ = "persist_failures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))  # command, decision, ack, policy_state
    error: Mapped[str] = mapped_column(String(1024))
    payload: Mapped[str] = mapped_column(Text)  # the row as JSON text, made storable
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Token(Base):
    """A bearer token (node agents; API clients). Only the secret's SHA-256 is stored."""

    __tablename__ = "tokens"
    __table_args__ = (Index("ix_tokens_node_id", "node_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public token id
    kind: Mapped[str] = mapped_column(String(16))  # "node" or "api"
    node_id: Mapped[str | None] = mapped_column(String(255), nullable=True)  # kind node
    role: Mapped[str | None] = mapped_column(String(16), nullable=True)  # kind api
    name: Mapped[str] = mapped_column(String(255))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class WebSession(Base):
    """A dashboard login: the cookie holds a random secret, the table only its SHA-256."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the secret
    token_id: Mapped[str] = mapped_column(ForeignKey("tokens.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEntry(Base):
    """Every change an admin made through the API: who, when, what, before and after."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str] = mapped_column(String(255))  # "token <id> (<name>)"
    action: Mapped[str] = mapped_column(String(64))  # e.g. slo_policy.update
    target: Mapped[str] = mapped_column(String(255))  # e.g. slo_policy 3, instance 7
    before: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(Json, nullable=True)


class NodeLease(Base):
    """Which server replica controls a node's instances, until when.

    Renewed by its replica every third of the lease; another replica takes a node only
    once its lease has run out, so two replicas never decide for one GPU. Times are the
    replicas' clocks (kept within a fraction of the lease by NTP).
    """

    __tablename__ = "node_leases"

    node_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    replica_id: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

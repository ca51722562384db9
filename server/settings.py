"""Server settings, read from AGFT_* environment variables."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGFT_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///agft.db",
        description="SQLAlchemy URL; SQLite (embedded default) or postgresql+psycopg://...",
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    window_s: float = Field(default=1.0, gt=0.05, le=60.0, description="telemetry window")
    lease_s: float = Field(
        default=5.0, gt=0.1, le=60.0, description="how long a lowered clock holds unrenewed"
    )
    policy: str = Field(default="agft", description="decision policy for every instance")
    static_clock_mhz: int | None = Field(
        default=None, description="clock for the static policy; unset means default clocks"
    )
    slo_ttft_s: float = Field(default=0.5, gt=0, description="default TTFT objective (s)")
    slo_tpot_s: float = Field(default=0.05, gt=0, description="default TPOT objective (s)")
    slo_percentile: float = Field(
        default=90.0, gt=0, lt=100, description="percentile the objectives apply to"
    )
    slo_max_p90_slowdown: float | None = Field(
        default=0.10,
        ge=0,
        le=10,
        description="default promise: most p90 slowdown against default clocks (unset: none)",
    )
    slo_max_attainment_loss_points: float | None = Field(
        default=1.0,
        ge=0,
        le=100,
        description="default promise: most SLO attainment (points) given up against default",
    )
    energy_price_per_kwh: float = Field(
        default=0.15, ge=0, le=100, description="electricity price for energy reports, per kWh"
    )
    energy_currency: str = Field(default="USD", max_length=8, description="its currency")
    grid_co2_g_per_kwh: float = Field(
        default=400.0,
        ge=0,
        le=2000,
        description="grid carbon intensity for energy reports (g CO2 per kWh); set yours",
    )
    migrate_on_start: bool = Field(
        default=True, description="run `alembic upgrade head` when the server starts"
    )
    persist_batch_max: int = Field(default=500, ge=1, description="rows per persistence batch")
    persist_interval_s: float = Field(
        default=0.2, gt=0.0, description="longest wait before a batch is written"
    )
    persist_max_queued: int = Field(
        default=200_000,
        ge=1,
        description="rows waiting for the database past which agent streams stop being read "
        "(backpressure: agents slow down, nothing is dropped)",
    )
    persist_stuck_after_s: float = Field(
        default=30.0, gt=0.0, description="/healthz reports degraded when a row waits longer"
    )
    persist_shutdown_s: float = Field(
        default=10.0, ge=0.0, description="longest shutdown waits for the database"
    )
    persist_spill_path: str | None = Field(
        default="agft-unwritten.jsonl",
        description="rows still unwritten at shutdown are appended here (empty: log only)",
    )
    replica_id: str | None = Field(
        default=None,
        max_length=255,
        description="this server's name among replicas sharing one database (unset: "
        "host:grpc_port, so a restarted server takes its own nodes back at once)",
    )
    node_lease_s: float = Field(
        default=5.0,
        ge=1.0,
        le=60.0,
        description="how long a replica's hold on a node lasts unrenewed: the longest "
        "another replica waits to take over the nodes of one that died",
    )
    decision_retention_days: float = Field(
        default=30.0,
        ge=0,
        description="decisions and clock commands older than this many days are deleted; "
        "the per-minute energy sums are kept (0: keep everything); on PostgreSQL a whole "
        "UTC day of decisions goes at once, when all of it is older",
    )
    retention_interval_s: float = Field(
        default=300.0,
        gt=0.0,
        le=86400.0,
        description="how often the retention runs and the decisions' day partitions "
        "(PostgreSQL) are made ahead",
    )
    state_save_interval_s: float = Field(
        default=5.0, gt=0.0, le=3600.0, description="how often learned states are saved"
    )
    grpc_tls_cert_file: str | None = Field(
        default=None, description="PEM certificate (chain) of the gRPC endpoint; enables TLS"
    )
    grpc_tls_key_file: str | None = Field(default=None, description="PEM private key for it")
    grpc_tls_client_ca_file: str | None = Field(
        default=None,
        description="PEM CA of agent certificates: when set, agents need one (mutual TLS)",
    )

"""decision_minutes: per-minute sums for the energy reports; indexes for retention

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 17:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The minute a window ends in, as each database stores a timestamp: PostgreSQL truncates;
# SQLite holds SQLAlchemy's "YYYY-MM-DD HH:MM:SS.ffffff" text.
_MINUTE = {
    "postgresql": "date_trunc('minute', window_end)",
    # (17 characters: up to the colon after the minutes, so no ":" in the SQL text, where
    # it would read as a bind parameter.)
    "sqlite": "substr(window_end, 1, 17) || '00.000000'",
}


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "decision_minutes",
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("windows_measured", sa.Integer(), nullable=False),
        sa.Column("windows_estimated", sa.Integer(), nullable=False),
        sa.Column("energy_j", sa.Float(), nullable=False),
        sa.Column("covered_energy_j", sa.Float(), nullable=False),
        sa.Column("default_energy_j", sa.Float(), nullable=False),
        sa.Column("modelled_default_j", sa.Float(), nullable=False),
        sa.Column("first_window", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_window", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["instance_id"],
            ["instances.id"],
            name=op.f("fk_decision_minutes_instance_id_instances"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("instance_id", "minute", name=op.f("pk_decision_minutes")),
    )
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index("ix_decisions_window_end", ["window_end"], unique=False)
    with op.batch_alter_table("clock_commands", schema=None) as batch_op:
        batch_op.create_index("ix_clock_commands_issued_at", ["issued_at"], unique=False)
    # The decisions already stored, summed the way the writer sums new ones.
    minute = _MINUTE[op.get_bind().dialect.name]
    op.execute(
        f"""
        INSERT INTO decision_minutes (
            instance_id, minute, windows, windows_measured, windows_estimated, energy_j,
            covered_energy_j, default_energy_j, modelled_default_j, first_window, last_window
        )
        SELECT
            instance_id,
            {minute},
            count(*),
            count(energy_j),
            sum(CASE WHEN energy_j IS NOT NULL AND default_energy_j IS NOT NULL
                THEN 1 ELSE 0 END),
            coalesce(sum(energy_j), 0.0),
            coalesce(sum(CASE WHEN default_energy_j IS NOT NULL THEN energy_j END), 0.0),
            coalesce(sum(CASE WHEN energy_j IS NOT NULL THEN default_energy_j END), 0.0),
            coalesce(sum(CASE WHEN energy_j IS NOT NULL AND default_energy_j <> energy_j
                THEN default_energy_j END), 0.0),
            min(window_end),
            max(window_end)
        FROM decisions
        GROUP BY instance_id, {minute}
        """
    )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("clock_commands", schema=None) as batch_op:
        batch_op.drop_index("ix_clock_commands_issued_at")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index("ix_decisions_window_end")
    op.drop_table("decision_minutes")

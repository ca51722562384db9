"""slo policies, instance modes and labels, audit log

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 06:11:07.773790

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "audit_log",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=255), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_at", ["at"], unique=False)

    # Existing rows were all taken in what is now mode "auto" under the server default.
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slo_policy_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("mode", sa.String(length=16), nullable=False, server_default="auto")
        )

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("labels", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )
        batch_op.add_column(
            sa.Column("mode", sa.String(length=16), nullable=False, server_default="auto")
        )
        batch_op.add_column(sa.Column("pinned_sm_clock_mhz", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("mode_note", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("mode_changed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("mode_changed_by", sa.String(length=255), nullable=True))
        batch_op.drop_constraint(
            batch_op.f("fk_instances_slo_policy_id_slo_policies"), type_="foreignkey"
        )
        batch_op.drop_column("slo_policy_id")

    # Nothing ever wrote slo_policies before this revision (it had no scope, so no row of
    # it could be applied): it is reshaped, not migrated.
    op.execute("DELETE FROM slo_policies")
    with op.batch_alter_table("slo_policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scope", sa.String(length=16), nullable=False))
        batch_op.add_column(sa.Column("scope_key", sa.String(length=2048), nullable=False))
        batch_op.add_column(sa.Column("selector", sa.JSON(), nullable=False))
        batch_op.add_column(sa.Column("instance_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("max_p90_slowdown", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("max_attainment_loss_points", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("controller", sa.String(length=32), nullable=False))
        batch_op.add_column(sa.Column("controller_tunables", sa.JSON(), nullable=False))
        batch_op.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False))
        batch_op.create_unique_constraint(batch_op.f("uq_slo_policies_scope_key"), ["scope_key"])
        batch_op.create_foreign_key(
            batch_op.f("fk_slo_policies_instance_id_instances"),
            "instances",
            ["instance_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.drop_column("window_s")


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DELETE FROM slo_policies")
    with op.batch_alter_table("slo_policies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("window_s", sa.Float(), nullable=False))
        batch_op.drop_constraint(
            batch_op.f("fk_slo_policies_instance_id_instances"), type_="foreignkey"
        )
        batch_op.drop_constraint(batch_op.f("uq_slo_policies_scope_key"), type_="unique")
        for column in (
            "updated_at",
            "controller_tunables",
            "controller",
            "max_attainment_loss_points",
            "max_p90_slowdown",
            "instance_id",
            "selector",
            "scope_key",
            "scope",
        ):
            batch_op.drop_column(column)

    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slo_policy_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_instances_slo_policy_id_slo_policies"),
            "slo_policies",
            ["slo_policy_id"],
            ["id"],
            ondelete="SET NULL",
        )
        for column in (
            "mode_changed_by",
            "mode_changed_at",
            "mode_note",
            "pinned_sm_clock_mhz",
            "mode",
            "labels",
        ):
            batch_op.drop_column(column)

    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_column("mode")
        batch_op.drop_column("slo_policy_id")

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_at")
    op.drop_table("audit_log")

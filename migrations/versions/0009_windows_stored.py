"""nodes.agent_boot_id, nodes.windows_stored_seq: which of an agent's windows are stored

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 07:40:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    # NULL until the node's agent sends a numbered window: older agents never do.
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_boot_id", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("windows_stored_seq", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("windows_stored_seq")
        batch_op.drop_column("agent_boot_id")

"""Intents name their owner and carry a lease, so recovery never undoes a live move.

Revision ID: 0008
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("move_intents") as batch:
        batch.add_column(sa.Column("owner", sa.String(96), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.Double, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("move_intents") as batch:
        batch.drop_column("lease_until")
        batch.drop_column("owner")

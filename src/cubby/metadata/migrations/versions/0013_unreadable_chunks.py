"""Chunks found unreadable where the index puts them, shared by every blocks process:
``unreadable_chunks`` (hash, the pack it could not be read from, when). Before, each process
remembered its own, so behind a load balancer an upload that landed on another process than
the failed read did not mend the chunk.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unreadable_chunks",
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("pack", sa.String(40), nullable=False),
        sa.Column("found_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("hash", name="pk_unreadable_chunks"),
    )


def downgrade() -> None:
    op.drop_table("unreadable_chunks")

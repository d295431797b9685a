"""Membership operations across shards carry an intent: accept, remove, leave and unshare on a
sharded deployment write a ``member_intents`` row on the shared namespace's shard before their
first step and delete it after the last, so recovery finishes one whose process died.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "member_intents",
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("user_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("actor", sa.BigInteger, nullable=False),
        sa.Column("others", sa.Text, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("owner", sa.String(96), nullable=True),
        sa.Column("lease_until", sa.Double, nullable=True),
        sa.PrimaryKeyConstraint("ns_id", "user_id", "op", name="pk_member_intents"),
    )


def downgrade() -> None:
    op.drop_table("member_intents")

"""Shares across shards: an intent per share made on a sharded deployment, and the revisions
the copied nodes had in the owner's root (so that a revision read before the share still names
the unchanged copy without reading the root's shard), and ``namespaces.settling``: a shared
namespace whose share is not acknowledged yet.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("namespaces") as batch:
        batch.add_column(sa.Column("settling", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_table(
        "share_intents",
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("intent_id", sa.String(32), nullable=False),
        sa.Column("new_ns", sa.BigInteger, nullable=False),
        sa.Column("node_id", sa.BigInteger, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("shard", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("base", sa.BigInteger, nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("invitee_id", sa.BigInteger, nullable=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("owner", sa.String(96), nullable=True),
        sa.Column("lease_until", sa.Double, nullable=True),
        sa.PrimaryKeyConstraint("ns_id", "intent_id", name="pk_share_intents"),
    )
    op.create_table(
        "share_origins",
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("node_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("rev", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("ns_id", "node_id", name="pk_share_origins"),
    )


def downgrade() -> None:
    op.drop_table("share_origins")
    op.drop_table("share_intents")
    with op.batch_alter_table("namespaces") as batch:
        batch.drop_column("settling")

"""Shared folders: members, mount nodes (nodes.target_ns), cross-namespace move intents.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("namespaces") as batch:
        batch.add_column(sa.Column("name", sa.Text, nullable=True))
        batch.add_column(sa.Column("cut", sa.BigInteger, nullable=True))
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("target_ns", sa.BigInteger, nullable=True))
        batch.add_column(sa.Column("pending", sa.String(32), nullable=True))
    op.create_index("ix_nodes_mounts", "nodes", ["ns_id", "target_ns"])
    op.create_table(
        "members",
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("user_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("invited_by", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("ns_id", "user_id", name="pk_members"),
    )
    op.create_index("ix_members_user", "members", ["user_id"])
    op.create_table(
        "move_intents",
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("intent_id", sa.String(32), nullable=False),
        sa.Column("dst_ns", sa.BigInteger, nullable=False),
        sa.Column("src_path", sa.Text, nullable=False),
        sa.Column("dst_path", sa.Text, nullable=False),
        sa.Column("node_id", sa.BigInteger, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("user_id", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("ns_id", "intent_id", name="pk_move_intents"),
    )


def downgrade() -> None:
    op.drop_table("move_intents")
    op.drop_table("members")
    op.drop_index("ix_nodes_mounts", table_name="nodes")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("pending")
        batch.drop_column("target_ns")
    with op.batch_alter_table("namespaces") as batch:
        batch.drop_column("cut")
        batch.drop_column("name")

"""Initial schema: accounts, namespaces, nodes, revisions, journal, chunk index.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from cubby.metadata.schema import Id, PathKey

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("name_key", sa.String(64), nullable=False),
        sa.Column("root_ns", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name_key", name="uq_users_name_key"),
    )
    op.create_table(
        "tokens",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.BigInteger, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("revoked_at", sa.Double, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_tokens"),
        sa.UniqueConstraint("token_hash", name="uq_tokens_token_hash"),
    )
    op.create_index("ix_tokens_user_id", "tokens", ["user_id"])
    op.create_table(
        "namespaces",
        sa.Column("ns_id", Id, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner_id", sa.BigInteger, nullable=True),
        sa.Column("head", sa.BigInteger, nullable=False),
        sa.Column("next_node", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("ns_id", name="pk_namespaces"),
    )
    op.create_table(
        "nodes",
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("node_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("parent_id", sa.BigInteger, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("path_key", PathKey, nullable=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("rev", sa.BigInteger, nullable=False),
        sa.Column("content_rev", sa.BigInteger, nullable=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("mtime", sa.Double, nullable=True),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("deleted_key", PathKey, nullable=True),
        sa.PrimaryKeyConstraint("ns_id", "node_id", name="pk_nodes"),
        sa.UniqueConstraint("ns_id", "path_key", name="uq_nodes_ns_id_path_key"),
    )
    op.create_index("ix_nodes_children", "nodes", ["ns_id", "parent_id", "path_key"])
    op.create_index("ix_nodes_deleted", "nodes", ["ns_id", "deleted_key"])
    op.create_table(
        "file_revs",
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("node_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("rev", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("blocklist", sa.Text, nullable=False),
        sa.Column("mtime", sa.Double, nullable=True),
        sa.Column("user_id", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("ns_id", "node_id", "rev", name="pk_file_revs"),
        sa.UniqueConstraint("ns_id", "rev", name="uq_file_revs_ns_id_rev"),
    )
    op.create_table(
        "journal",
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("jid", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.Column("node_id", sa.BigInteger, nullable=False),
        sa.Column("parent_id", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("path_key", PathKey, nullable=False),
        sa.Column("rev", sa.BigInteger, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("mtime", sa.Double, nullable=True),
        sa.Column("old_path", sa.Text, nullable=True),
        sa.Column("old_parent_id", sa.BigInteger, nullable=True),
        sa.Column("user_id", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("ns_id", "jid", name="pk_journal"),
    )
    op.create_index("ix_journal_path", "journal", ["ns_id", "path_key", "jid"])
    op.create_table(
        "ns_chunks",
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("refs", sa.BigInteger, nullable=False),
        sa.Column("touched_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("ns_id", "hash", name="pk_ns_chunks"),
    )
    op.create_index("ix_ns_chunks_hash", "ns_chunks", ["hash", "refs"])
    op.create_table(
        "blocks",
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("touched_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("hash", name="pk_blocks"),
    )
    op.create_index("ix_blocks_touched", "blocks", ["touched_at"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_settings"),
    )


def downgrade() -> None:
    for name in ("settings", "blocks", "ns_chunks", "journal", "file_revs", "nodes", "namespaces", "tokens", "users"):
        op.drop_table(name)

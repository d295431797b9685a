"""Pack store: the chunk index, packs, deleted packs; chunk tombstones for garbage collection.

Revision ID: 0004
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0005"  # merged after 0005 (written against 0003): one head
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chunk_tombstones",
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("hash", name="pk_chunk_tombstones"),
    )
    op.create_table(
        "chunk_index",
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("pack", sa.String(40), nullable=False),
        sa.Column("pos", sa.BigInteger, nullable=False),
        sa.Column("stored_len", sa.Integer, nullable=False),
        sa.Column("plain_len", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("hash", name="pk_chunk_index"),
    )
    op.create_index("ix_chunk_index_pack", "chunk_index", ["pack"])
    op.create_table(
        "packs",
        sa.Column("pack", sa.String(40), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("payload", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("pack", name="pk_packs"),
    )
    op.create_table(
        "deleted_packs",
        sa.Column("pack", sa.String(40), nullable=False),
        sa.Column("deleted_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("pack", name="pk_deleted_packs"),
    )


def downgrade() -> None:
    for name in ("deleted_packs", "packs", "chunk_index", "chunk_tombstones"):
        op.drop_table(name)

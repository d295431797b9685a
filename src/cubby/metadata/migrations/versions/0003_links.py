"""Links: public, unguessable URLs to a file or folder, stored by token hash.

Revision ID: 0003
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "links",
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("link_id", sa.String(32), nullable=False),
        sa.Column("node_id", sa.BigInteger, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=True),
        sa.Column("password_hash", sa.String(255), nullable=True),
        sa.Column("revoked_at", sa.Double, nullable=True),
        sa.PrimaryKeyConstraint("ns_id", "link_id", name="pk_links"),
        sa.UniqueConstraint("token_hash", name="uq_links_token_hash"),
        sa.UniqueConstraint("link_id", name="uq_links_link_id"),
    )
    op.create_index("ix_links_created_by", "links", ["created_by"])


def downgrade() -> None:
    op.drop_table("links")

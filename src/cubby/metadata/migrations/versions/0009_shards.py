"""Sharding by namespace: placements, shard numbers, the directory's membership and link-token
copies, sealed namespaces.

Every database (the directory and each shard) gets the whole schema and uses only its part
(docs/SHARDING.md): the directory reads ``placements``, ``shards``, ``memberships`` and
``link_tokens``; a shard reads ``namespaces.sealed``. An existing single database becomes the directory and the
only shard, named ``main``: every namespace it holds is placed there, and its ``members`` rows
are copied into ``memberships``, its links' tokens into ``link_tokens``.

Revision ID: 0009
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "placements",
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("shard", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="live"),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("lease_until", sa.Double, nullable=True),
        sa.PrimaryKeyConstraint("ns_id", name="pk_placements"),
    )
    op.create_index("ix_placements_shard", "placements", ["shard"])
    op.create_table(
        "shards",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_shards"),
        sa.UniqueConstraint("number", name="uq_shards_number"),
    )
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("ns_id", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("role", sa.String(8), nullable=False),
        sa.Column("state", sa.String(8), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "ns_id", name="pk_memberships"),
    )
    op.create_index("ix_memberships_ns_id", "memberships", ["ns_id"])
    op.create_table(
        "link_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("link_id", sa.String(32), nullable=False),
        sa.Column("ns_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("token_hash", name="pk_link_tokens"),
        sa.UniqueConstraint("link_id", name="uq_link_tokens_link_id"),
    )
    with op.batch_alter_table("namespaces") as batch:
        batch.add_column(sa.Column("sealed", sa.Boolean, nullable=False, server_default=sa.false()))
    op.execute(
        "INSERT INTO placements (ns_id, shard, state, epoch) SELECT ns_id, 'main', 'live', 1 FROM namespaces"
    )
    op.execute("INSERT INTO memberships (user_id, ns_id, role, state) SELECT user_id, ns_id, role, state FROM members")
    op.execute("INSERT INTO link_tokens (token_hash, link_id, ns_id) SELECT token_hash, link_id, ns_id FROM links")


def downgrade() -> None:
    with op.batch_alter_table("namespaces") as batch:
        batch.drop_column("sealed")
    op.drop_table("link_tokens")
    op.drop_index("ix_memberships_ns_id", "memberships")
    op.drop_table("memberships")
    op.drop_table("shards")
    op.drop_index("ix_placements_shard", "placements")
    op.drop_table("placements")

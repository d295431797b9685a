"""File modes: a file's kind of content (regular, executable, symbolic link) beside its bytes.

A ``mode`` column on nodes, file revisions and the journal, as git spells it: 0o100644 a
regular file, 0o100755 an executable one, 0o120000 a symbolic link whose target is the
file's content. NULL (every row written before this revision) reads as 0o100644.

Revision ID: 0005
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0006"  # chained after main's 0008 -> 0006 when merged (written against 0003): one head
branch_labels = None
depends_on = None

TABLES = ("nodes", "file_revs", "journal")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("mode", sa.Integer, nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("mode")

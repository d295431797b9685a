"""``ix_ns_chunks_hash`` on the hash alone, no longer on (hash, refs).

Why: every commit changes ``refs`` of its files' chunks, and every delete too. With ``refs`` in
the index each change moved the row's entry in it, a write to a leaf of an index keyed by a
random hash per chunk: once the index has more leaves than a batch has chunks, a page of the
WAL per file committed, written again at the checkpoint. On the index by hash alone a change
of ``refs`` touches the row and nothing else.

What it costs: the collector's "is this chunk referenced anywhere" (by hash, ``refs > 0``)
reads the rows the index finds, where the index alone answered it. Its scan of a million
chunks, all referenced, took 4.5-5.4 s against 3.2-3.6 s (SQLite, in process): a read, which
holds no lock a commit waits for, in a background pass, where the commit is every upload's.
What it gains: 10,000 files of 4 KiB put into a store already holding 80,000-110,000 took
2.79 and 3.03 s of server CPU against 3.08 and 3.27 s, in two alternated sets of four puts
(bench/README.md, twenty-seventh session).

Revision ID: 0014
Revises: 0013
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_ns_chunks_hash", table_name="ns_chunks")
    op.create_index("ix_ns_chunks_hash", "ns_chunks", ["hash"])


def downgrade() -> None:
    op.drop_index("ix_ns_chunks_hash", table_name="ns_chunks")
    op.create_index("ix_ns_chunks_hash", "ns_chunks", ["hash", "refs"])

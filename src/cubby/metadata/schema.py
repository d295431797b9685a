"""The metadata schema, in SQLAlchemy Core, for SQLite, PostgreSQL and MariaDB alike.

Every table that describes files (nodes, file_revs, journal, ns_chunks, members, move_intents,
share_intents, member_intents, share_origins, links) is keyed by namespace id first: a namespace's rows never need another
namespace's rows, so namespaces can be spread over database shards without cross-shard joins. Only ``users``,
``tokens``, ``blocks`` and ``settings`` are global.

Path keys are stored as UTF-8 *bytes* (`PathKey`): byte order is code point order on every
engine (no collation surprises such as MariaDB's case- and trailing-space-insensitive defaults),
a parent always sorts before its children, and a subtree is one index range scan.

The Alembic migrations in ``migrations/versions`` create exactly these tables; a test checks
that the two agree.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    create_engine,
    false,
    inspect,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from cubby.core.paths import MAX_PATH_BYTES

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only autoincrements an INTEGER PRIMARY KEY; elsewhere ids are 64-bit.
Id = BigInteger().with_variant(Integer(), "sqlite")


class PathKey(TypeDecorator[str]):
    """A case-folded path key, stored as UTF-8 bytes so that ordering is bytewise everywhere."""

    impl = LargeBinary
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.VARBINARY(MAX_PATH_BYTES))
        return dialect.type_descriptor(LargeBinary())

    def process_bind_param(self, value: str | None, dialect: Dialect) -> bytes | None:
        return None if value is None else value.encode("utf-8")

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> str | None:
        return None if value is None else bytes(value).decode("utf-8")


Hash = String(64)

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("name_key", String(64), nullable=False, unique=True),
    Column("root_ns", BigInteger, nullable=True),
    Column("created_at", Double, nullable=False),
    # When `cubby user disable` disabled the user (NULL: active). While set, their tokens,
    # web sessions and public links are refused; nothing of theirs is deleted.
    Column("disabled_at", Double, nullable=True),
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False, index=True),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("label", String(200), nullable=False, default=""),
    Column("created_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
)

namespaces = Table(
    "namespaces",
    metadata,
    Column("ns_id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("owner_id", BigInteger, nullable=True),
    Column("head", BigInteger, nullable=False, default=0),
    Column("next_node", BigInteger, nullable=False, default=1),
    Column("created_at", Double, nullable=False),
    Column("name", Text, nullable=True),  # a shared folder's name: what members' mounts are called
    Column("cut", BigInteger, nullable=True),  # a shared folder's last journal id copied by the share
    # Set on the old shard while `cubby admin move-namespace` copies the namespace away:
    # writers there are refused (retryable), readers are not.
    Column("sealed", Boolean, nullable=False, default=False, server_default=false()),
    # A shared namespace made by a share across shards, from its copy until the share is
    # acknowledged (metadata/share_steps.py): a delete in it meanwhile was issued before the
    # share was acknowledged, so it also forgets the history the share copied.
    Column("settling", Boolean, nullable=False, default=False, server_default=false()),
)

nodes = Table(
    "nodes",
    metadata,
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False),
    Column("node_id", BigInteger, primary_key=True, autoincrement=False),
    Column("parent_id", BigInteger, nullable=False),  # 0 = the namespace root
    Column("name", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("path_key", PathKey, nullable=True),  # NULL once deleted, so the name is free again
    Column("kind", String(8), nullable=False),
    Column("rev", BigInteger, nullable=False),
    Column("content_rev", BigInteger, nullable=True),  # the file_revs row holding the content
    Column("size", BigInteger, nullable=False, default=0),
    Column("content_hash", String(64), nullable=True),
    Column("mtime", Double, nullable=True),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("deleted_key", PathKey, nullable=True),  # the key it had when deleted: history, restore
    Column("target_ns", BigInteger, nullable=True),  # kind "mount": the namespace mounted here
    # A cross-namespace move's intent, until it lands (no path key); on a live folder, a share
    # intent that froze it (metadata/share_steps.py): nothing is written below it meanwhile.
    Column("pending", String(32), nullable=True),
    Column("mode", Integer, nullable=True),  # files: 0o100644, 0o100755 or 0o120000 (a link); NULL 0o100644
    UniqueConstraint("ns_id", "path_key"),
    Index("ix_nodes_children", "ns_id", "parent_id", "path_key"),
    Index("ix_nodes_deleted", "ns_id", "deleted_key"),
    Index("ix_nodes_mounts", "ns_id", "target_ns"),
)

file_revs = Table(
    "file_revs",
    metadata,
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False),
    Column("node_id", BigInteger, primary_key=True, autoincrement=False),
    Column("rev", BigInteger, primary_key=True, autoincrement=False),
    Column("path", Text, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("blocklist", Text, nullable=False),  # JSON [[hash, size], ...] in file order
    Column("mtime", Double, nullable=True),
    Column("mode", Integer, nullable=True),
    Column("user_id", BigInteger, nullable=True),
    Column("created_at", Double, nullable=False),
    UniqueConstraint("ns_id", "rev"),
)

CURRENT_REVISION = and_(
    file_revs.c.ns_id == nodes.c.ns_id, file_revs.c.node_id == nodes.c.node_id, file_revs.c.rev == nodes.c.content_rev
)
"""The join of a file's node to its current revision (the content it has now)."""

journal = Table(
    "journal",
    metadata,
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False),
    Column("jid", BigInteger, primary_key=True, autoincrement=False),
    Column("op", String(16), nullable=False),
    Column("node_id", BigInteger, nullable=False),
    Column("parent_id", BigInteger, nullable=False),
    Column("kind", String(8), nullable=False),
    Column("name", Text, nullable=False),
    Column("path", Text, nullable=False),
    Column("path_key", PathKey, nullable=False),
    Column("rev", BigInteger, nullable=False),
    Column("size", BigInteger, nullable=False, default=0),
    Column("content_hash", String(64), nullable=True),
    Column("mtime", Double, nullable=True),
    Column("old_path", Text, nullable=True),
    Column("old_parent_id", BigInteger, nullable=True),
    Column("user_id", BigInteger, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("mode", Integer, nullable=True),
    Index("ix_journal_path", "ns_id", "path_key", "jid"),
)

ns_chunks = Table(
    "ns_chunks",
    metadata,
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", Hash, primary_key=True),
    Column("refs", BigInteger, nullable=False, default=0),
    Column("touched_at", Double, nullable=False),
    # By hash alone: a commit changes ``refs``, which must not move an entry of an index keyed
    # by a random hash (migration 0014).
    Index("ix_ns_chunks_hash", "hash"),
)

members = Table(
    "members",
    metadata,
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False),
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("role", String(8), nullable=False),  # owner | editor | viewer
    Column("state", String(8), nullable=False),  # invited | active
    Column("invited_by", BigInteger, nullable=True),
    Column("created_at", Double, nullable=False),
    # Which shared folders a user belongs to: read on every request by authentication. On a
    # sharded deployment this index becomes a per-user directory beside the users table.
    Index("ix_members_user", "user_id"),
)

move_intents = Table(
    "move_intents",
    metadata,
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False),  # the source namespace
    Column("intent_id", String(32), primary_key=True),
    Column("dst_ns", BigInteger, nullable=False),
    Column("src_path", Text, nullable=False),
    Column("dst_path", Text, nullable=False),
    Column("node_id", BigInteger, nullable=False),  # the moved node in the source namespace
    Column("state", String(16), nullable=False),  # started | undoing | removed (see metadata/moves.py)
    Column("user_id", BigInteger, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("owner", String(96), nullable=True),  # host/pid/start of the process doing the move
    Column("lease_until", Double, nullable=True),  # renewed at every step (metadata/leases.py)
)

share_intents = Table(
    "share_intents",
    metadata,
    # A share whose new namespace lives on another shard than the owner's root (see
    # metadata/share_steps.py); on the root's shard, keyed by the root namespace.
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False),  # the owner's root
    Column("intent_id", String(32), primary_key=True),
    Column("new_ns", BigInteger, nullable=False),  # the shared namespace being made
    Column("node_id", BigInteger, nullable=False),  # the shared folder's node in the root
    Column("path", Text, nullable=False),  # its path when the share began
    Column("shard", String(64), nullable=False),  # the shard of the new namespace
    Column("state", String(16), nullable=False),  # frozen | undoing | mounted
    Column("base", BigInteger, nullable=False),  # the root's head at the freeze: S's first jid - 1
    Column("user_id", BigInteger, nullable=False),  # the owner
    Column("invitee_id", BigInteger, nullable=False),
    Column("role", String(8), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("owner", String(96), nullable=True),  # host/pid/start of the process sharing
    Column("lease_until", Double, nullable=True),  # renewed at every step (metadata/leases.py)
)

member_intents = Table(
    "member_intents",
    metadata,
    # An accept, remove, leave or unshare on a sharded deployment (metadata/sharded_shares.py),
    # on the shared namespace's shard: what recovery runs again if its process dies mid-way.
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False),  # the shared namespace
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),  # the member (unshare: the owner)
    Column("op", String(8), primary_key=True),  # accept | remove | leave | unshare
    Column("actor", BigInteger, nullable=False),  # who asked
    Column("others", Text, nullable=True),  # unshare: the other members' ids, comma-separated
    Column("created_at", Double, nullable=False),
    Column("owner", String(96), nullable=True),  # host/pid/start of the process running it
    Column("lease_until", Double, nullable=True),  # metadata/leases.py
)

share_origins = Table(
    "share_origins",
    metadata,
    # On a sharded deployment, the revision each node copied by a share had in the owner's
    # root (`cubby.metadata.tree.same_as_before_share`), on the shared namespace's shard.
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False),
    Column("node_id", BigInteger, primary_key=True, autoincrement=False),
    Column("rev", BigInteger, nullable=False),
)

blocks = Table(
    "blocks",
    metadata,
    Column("hash", Hash, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("touched_at", Double, nullable=False),
    Index("ix_blocks_touched", "touched_at"),
)

chunk_tombstones = Table(
    "chunk_tombstones",
    metadata,
    # A chunk the collector took out of ``blocks``: its bytes may be reclaimed (see
    # `metadata/collector.py`). An upload that brings the chunk back deletes the
    # tombstone in the transaction that re-creates the ``blocks`` row. Keyed by hash, like
    # ``blocks`` and ``chunk_index``, so that all three split by hash prefix together.
    Column("hash", Hash, primary_key=True),
    Column("at", Double, nullable=False),
)

# The chunk index of the pack store (`cubby.blockstore.packs`, `cubby.metadata.chunk_index`):
# where each chunk's bytes are. Keyed by hash and never joined with namespace tables.
chunk_index = Table(
    "chunk_index",
    metadata,
    Column("hash", Hash, primary_key=True),
    Column("pack", String(40), nullable=False, index=True),
    Column("pos", BigInteger, nullable=False),
    Column("stored_len", Integer, nullable=False),
    Column("plain_len", Integer, nullable=False),
)

packs = Table(
    "packs",
    metadata,
    Column("pack", String(40), primary_key=True),
    Column("size", BigInteger, nullable=False),  # bytes of the whole pack object
    Column("payload", BigInteger, nullable=False),  # bytes of its chunks (what repacking weighs)
    Column("created_at", Double, nullable=False),
)

deleted_packs = Table(
    "deleted_packs",
    metadata,
    # A pack no index row points at any more (repacked or wholly dead); its object is deleted
    # after a grace period for reads that looked up their location before the switch.
    Column("pack", String(40), primary_key=True),
    Column("deleted_at", Double, nullable=False),
)

unreadable_chunks = Table(
    "unreadable_chunks",
    metadata,
    # A chunk a blocks process could not read where ``chunk_index`` puts it (its pack missing,
    # or bytes that do not match its name), and that pack: whichever process next receives
    # the chunk's bytes stores them again and moves it (`cubby.blockstore.packs`, "Mending").
    # Keyed by hash like the index, beside it in the chunk database.
    Column("hash", Hash, primary_key=True),
    Column("pack", String(40), nullable=False),
    Column("found_at", Double, nullable=False),
)

links = Table(
    "links",
    metadata,
    # Keyed by namespace first like every table describing files; ``link_id`` (random, not a
    # counter, so ids reveal nothing) and ``token_hash`` are also unique on their own because a
    # public request knows only the token and a management request only the id.
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False),
    Column("link_id", String(32), primary_key=True),
    Column("node_id", BigInteger, nullable=False),  # stable: the link follows renames and moves
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_by", BigInteger, nullable=False, index=True),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=True),
    Column("password_hash", String(255), nullable=True),  # scrypt$n$r$p$salt$hash
    Column("revoked_at", Double, nullable=True),
    UniqueConstraint("link_id"),
)

settings = Table(
    "settings",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


# -- the directory's tables for sharding (docs/SHARDING.md, `cubby.metadata.shards`) --------------
placements = Table(
    "placements",
    metadata,
    # Which shard holds each namespace. ``epoch`` grows with every move, so a shard transaction
    # routed by an old placement can tell; ``state`` is ``moving`` while `cubby admin
    # move-namespace` copies it (``owner`` and ``lease_until`` say who, until when).
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False),
    Column("shard", String(64), nullable=False, index=True),
    Column("state", String(16), nullable=False, default="live", server_default="live"),
    Column("epoch", BigInteger, nullable=False, default=1, server_default="1"),
    Column("owner", String(64), nullable=True),
    Column("lease_until", Double, nullable=True),
)

shards = Table(
    "shards",
    metadata,
    # A shard's number is the top bits of the namespace ids it allocates (`cubby.metadata.
    # shards.allocate_ns_id`): ids are unique across shards with no global sequence.
    Column("name", String(64), primary_key=True),
    Column("number", Integer, nullable=False, unique=True),
    Column("created_at", Double, nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    # The directory's copy of every shard's ``members`` rows: authentication reads which
    # namespaces a user reaches here, without asking each shard. The shard's row stays the
    # truth inside a namespace transaction.
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("ns_id", BigInteger, primary_key=True, autoincrement=False, index=True),
    Column("role", String(8), nullable=False),
    Column("state", String(8), nullable=False),
)

link_tokens = Table(
    "link_tokens",
    metadata,
    # Which namespace (so which shard) holds each link, by the two names a request knows it by:
    # a public request has only the token, a management request only the id. Written before
    # the shard's ``links`` row; the shard's row stays the truth (revoked, expiry, target).
    Column("token_hash", String(64), primary_key=True),
    Column("link_id", String(32), nullable=False, unique=True),
    Column("ns_id", BigInteger, nullable=False),
)


passwords = Table(
    "passwords",
    metadata,
    # One row per user who may log in to the web app: an argon2id hash (salt and parameters
    # inside it). Users without a row have API tokens only.
    Column("user_id", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(255), nullable=False),
    Column("changed_at", Double, nullable=False),
)

web_sessions = Table(
    "web_sessions",
    metadata,
    # A browser's login. Only the SHA-256 of the cookie's secret is stored (like tokens), so a
    # copy of the database logs nobody in; ``id`` is what the owner sees and revokes.
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("user_id", BigInteger, nullable=False, index=True),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("created_at", Double, nullable=False),
    Column("last_seen", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
    Column("revoked_at", Double, nullable=True),
    Column("address", String(64), nullable=False, default=""),
    Column("agent", String(200), nullable=False, default=""),
)


def drop_all(url: str) -> None:
    """Drop every cubby table (and Alembic's version table) from the database at ``url``."""
    engine = create_engine(url)
    try:
        metadata.drop_all(engine)
        with engine.begin() as conn:
            if "alembic_version" in inspect(conn).get_table_names():
                conn.exec_driver_sql("DROP TABLE alembic_version")
    finally:
        engine.dispose()

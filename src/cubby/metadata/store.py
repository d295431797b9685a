"""`SqlMetadataStore`: the metadata store on SQLite, PostgreSQL or MariaDB, as a thin facade.

Each job lives in a module of its own, and this class composes them over one `Database`,
keeping the method names the server and the tests call (the contract is
`cubby.metadata.base.MetadataStore`):

==============================  ===========================================================
module                          job
==============================  ===========================================================
`cubby.metadata.nstxn`          one namespace's write transaction: lock, journal ids, buffer
`cubby.metadata.tree`           tree rules inside it: mounts, missing folders, pre-share revs
`cubby.metadata.users`          users and API tokens (directory side)
`cubby.metadata.memberships`    who reaches which namespace, and where it is mounted
`cubby.metadata.reads`          heads, entries, listings, history, chunk lists, journal
`cubby.metadata.writes`         commits, folders, deletes, renames, restores
`cubby.metadata.chunks`         chunk availability, uploads, proofs of possession
`cubby.metadata.collector`      garbage collection of unreferenced chunks
`cubby.metadata.shares`         shared folders (``store.sharing``)
`cubby.metadata.moves`          moves between namespaces (``store.moves``)
==============================  ===========================================================

Each module says in its docstring what it reads or writes across namespaces, which is what
will need intents once namespaces are spread over shard databases.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from cubby.blockstore.base import BlockStore
from cubby.errors import CubbyError
from cubby.metadata import memberships as membership
from cubby.metadata import migrate
from cubby.metadata.chunks import ChunkAccess, load_challenge_secret
from cubby.metadata.collector import GarbageCollector
from cubby.metadata.engine import Database
from cubby.metadata.moves import CrossMoves
from cubby.metadata.possession import Challenges, Checked, ChunkReader, Claim
from cubby.metadata.reads import FileReads
from cubby.metadata.shards import ShardRouter
from cubby.metadata.shares import Sharing
from cubby.metadata.users import UserDirectory, token_hash
from cubby.metadata.writes import FileWrites, content_hash_of
from cubby.model import (
    ChunkRef,
    CommitRequest,
    CommitResult,
    Entry,
    GcStats,
    JournalEntry,
    Listing,
    Principal,
    Revision,
    Role,
    User,
)

if TYPE_CHECKING:
    from cubby.metadata.accounts import Accounts
    from cubby.metadata.base import MetadataStore


class SqlMetadataStore:
    """The metadata store (see `cubby.metadata.base.MetadataStore` for the contract)."""

    def __init__(self, db: Database | ShardRouter) -> None:
        self.router = db if isinstance(db, ShardRouter) else ShardRouter(db)
        """The directory, chunk database and shards (`cubby.metadata.shards`)."""
        db = self.router.directory
        self.db = db
        self.challenges = Challenges(load_challenge_secret(db))
        """Possession nonces under the server's secret (see metadata/possession.py)."""
        self.users = UserDirectory(db, self.router)
        self.reads = FileReads(db)
        self.writes = FileWrites(db, self.challenges, self.reads)
        self.chunks = ChunkAccess(db, self.challenges)
        self.collector = GarbageCollector(db)
        self.sharing = Sharing(db, self.router)
        """Shared folders: share, accept, remove, leave, unshare, list (see metadata/shares.py)."""
        self.moves = CrossMoves(db, self.reads.stat, router=self.router)
        """Moves between namespaces, with intents and recovery (see metadata/moves.py)."""
        self._accounts: Accounts | None = None

    @property
    def accounts(self) -> Accounts:
        """Passwords and web sessions (`cubby.metadata.accounts.Accounts`), made on first use:
        argon2 is loaded only by processes that log people in."""
        if self._accounts is None:
            from cubby.metadata.accounts import Accounts

            self._accounts = Accounts(self.db, self.principal_of)
        return self._accounts

    def close(self) -> None:
        self.router.close()

    # -- accounts (cubby.metadata.users, cubby.metadata.memberships) -----------------------
    def create_user(self, name: str) -> tuple[User, str]:
        return self.users.create_user(name)

    def get_user(self, name: str) -> User:
        return self.users.get_user(name)

    def create_token(self, user_id: int, label: str = "") -> tuple[int, str]:
        return self.users.create_token(user_id, label)

    def list_tokens(self, user_id: int) -> builtins.list[dict[str, object]]:
        return self.users.list_tokens(user_id)

    def revoke_token(self, user_id: int, token_id: int) -> None:
        self.users.revoke_token(user_id, token_id)

    def authenticate(self, token: str, *, fresh: bool = False) -> Principal:
        """The principal of ``token``. (This store always reads afresh; ``fresh`` is for a
        cached store, `cubby.cache.store.CachedStore`.)"""
        uid, name, root_ns, token_id = self.users.token_owner(token)
        return self.principal_of(uid, name, root_ns, token_id=token_id)

    def token_owner(self, token: str) -> tuple[int, str, int, int]:
        return self.users.token_owner(token)

    def token_hash_of(self, token_id: int) -> str | None:
        return self.users.token_hash_of(token_id)

    def principal_of(self, user_id: int, name: str, root_ns: int, *, token_id: int = 0) -> Principal:
        """The principal of a user whose credential was checked elsewhere (a token here, a
        web session in `cubby.metadata.accounts`), with memberships read afresh."""
        roles, mounts = self.memberships(user_id, root_ns)
        return Principal(
            user_id=user_id, name=name, root_ns=root_ns, token_id=token_id, namespaces=roles, mounts=mounts,
        )

    def user_can_read(self, user_id: int, ns_id: int) -> bool:
        return membership.user_can_read(self.db, user_id, ns_id)

    def memberships(self, user_id: int, root_ns: int) -> tuple[dict[int, Role], dict[str, int]]:
        return membership.memberships(self.db, user_id, root_ns)

    # -- reads (cubby.metadata.reads) ------------------------------------------------------
    def head(self, ns_id: int) -> int:
        return self.reads.head(ns_id)

    def heads(self, ns_ids: Iterable[int]) -> dict[int, int]:
        return self.reads.heads(ns_ids)

    def stat(self, ns_id: int, path: str) -> Entry:
        return self.reads.stat(ns_id, path)

    def list(
        self, ns_id: int, path: str, recursive: bool = False, cursor: str | None = None, limit: int = 1000
    ) -> Listing:
        return self.reads.list(ns_id, path, recursive, cursor, limit)

    def history(self, ns_id: int, path: str, limit: int = 100) -> builtins.list[Revision]:
        return self.reads.history(ns_id, path, limit)

    def blocklist(self, ns_id: int, path: str, rev: int | None = None) -> tuple[Entry, builtins.list[ChunkRef]]:
        return self.reads.blocklist(ns_id, path, rev)

    def blocklists(
        self, ns_id: int, paths_: Sequence[str]
    ) -> builtins.list[tuple[Entry, builtins.list[ChunkRef]] | CubbyError]:
        return self.reads.blocklists(ns_id, paths_)

    def journal(self, ns_id: int, after: int, limit: int = 1000) -> builtins.list[JournalEntry]:
        return self.reads.journal(ns_id, after, limit)

    # -- writes (cubby.metadata.writes) ----------------------------------------------------
    def commit(self, user_id: int, ns_id: int, req: CommitRequest, readable: Iterable[int] = ()) -> CommitResult:
        return self.writes.commit(user_id, ns_id, req, readable)

    def commit_many(
        self, user_id: int, ns_id: int, reqs: Sequence[CommitRequest], readable: Iterable[int] = ()
    ) -> builtins.list[CommitResult | CubbyError]:
        return self.writes.commit_many(user_id, ns_id, reqs, readable)

    def mkdir(self, user_id: int, ns_id: int, path: str) -> Entry:
        return self.writes.mkdir(user_id, ns_id, path)

    def mkdir_many(self, user_id: int, ns_id: int, paths_: Sequence[str]) -> builtins.list[Entry | CubbyError]:
        return self.writes.mkdir_many(user_id, ns_id, paths_)

    def delete(
        self,
        user_id: int,
        ns_id: int,
        path: str,
        expected_rev: int | None = None,
        *,
        forget_through: int | None = None,
        unchanged_since: int | None = None,
    ) -> Entry:
        return self.writes.delete(
            user_id, ns_id, path, expected_rev, forget_through=forget_through, unchanged_since=unchanged_since
        )

    def move(self, user_id: int, ns_id: int, src: str, dst: str, expected_rev: int | None = None) -> Entry:
        return self.writes.move(user_id, ns_id, src, dst, expected_rev)

    def restore(self, user_id: int, ns_id: int, path: str, rev: int) -> Entry:
        return self.writes.restore(user_id, ns_id, path, rev)

    # -- chunks (cubby.metadata.chunks) and collection (cubby.metadata.collector) ----------
    def chunk_readable(self, ns_ids: Iterable[int], hashes: Sequence[str]) -> set[str]:
        return self.chunks.chunk_readable(ns_ids, hashes)

    def ingest_chunks(self, ns_id: int, items: Sequence[tuple[str, bytes]], blocks_store: BlockStore) -> int:
        return self.chunks.ingest_chunks(ns_id, items, blocks_store)

    def challenge(self, user_id: int, ns_id: int, chunk_hash: str, size: int, *, at: float | None = None) -> str:
        return self.chunks.challenge(user_id, ns_id, chunk_hash, size, at=at)

    def accept_proofs(
        self, user_id: int, ns_id: int, claims: Sequence[Claim], blocks_store: ChunkReader,
        *, within: Iterable[int] | None = None,
    ) -> Checked:
        return self.chunks.accept_proofs(user_id, ns_id, claims, blocks_store, within=within)

    def collect_garbage(
        self, blocks_store: BlockStore, grace_seconds: float, *, fault: Callable[[str], None] | None = None
    ) -> GcStats:
        return self.collector.collect_garbage(blocks_store, grace_seconds, fault=fault)

    def reclaim_tombstones(self, blocks_store: BlockStore, hook: Callable[[str], None] = lambda _step: None) -> int:
        return self.collector.reclaim_tombstones(blocks_store, hook)


def open_store(
    url: str, *, shards: Mapping[str, str] | None = None, place_new: str | None = None, migrate_schema: bool = True
) -> SqlMetadataStore:
    """Open (and by default migrate to the newest schema) the metadata database at ``url``:
    alone, the directory and the only shard; with ``shards`` (``{name: url}``), the directory
    of those shards. Every database gets the whole schema (each uses only its part); a shard
    whose URL is the directory's shares its `Database`."""
    directory = Database(url)
    dbs: dict[str, Database] = {}
    for name, shard_url in (shards or {}).items():
        dbs[name] = directory if shard_url == url else Database(shard_url)
    router = ShardRouter(directory, dbs or None, place_new=place_new)
    if migrate_schema:
        for db in router.databases():
            migrate.upgrade(db.writer)
    return SqlMetadataStore(router)


if TYPE_CHECKING:
    _satisfies: type[MetadataStore] = SqlMetadataStore
    """mypy proves here that the store meets the Protocol the server is typed against."""

__all__ = ["SqlMetadataStore", "content_hash_of", "open_store", "token_hash"]

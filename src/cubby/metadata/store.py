"""`SqlMetadataStore`: the metadata store on SQLite, PostgreSQL or MariaDB, as a thin facade.

Each job lives in a module of its own, and this class composes them over a `ShardRouter`
(the directory, the chunk database and the shards; one database in all by default), keeping
the method names the server and the tests call (the contract is
`cubby.metadata.base.MetadataStore`). Namespace-keyed calls run on the namespace's shard
(`cubby.metadata.routing`), user- and token-keyed ones on the directory:

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
`cubby.metadata.shards`         the router: placements, shard numbers, namespace ids
`cubby.metadata.routing`        the per-shard modules, and calls split or routed by shard
`cubby.metadata.shardchunks`    chunks across databases: touches, per-shard possession
==============================  ===========================================================

Each module says in its docstring what it reads or writes across namespaces: what needs
intents when those namespaces are on different shards (docs/SHARDING.md).
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from cubby.blockstore.base import BlockStore
from cubby.errors import CubbyError
from cubby.metadata import memberships as membership
from cubby.metadata import migrate
from cubby.metadata.chunks import ChunkAccess, load_challenge_secret
from cubby.metadata.collector import GarbageCollector
from cubby.metadata.deleted import deleted_in
from cubby.metadata.engine import Database
from cubby.metadata.links import LinkStore
from cubby.metadata.moves import CrossMoves
from cubby.metadata.possession import Challenges, Checked, ChunkReader, Claim
from cubby.metadata.routing import ShardSet
from cubby.metadata.shards import ShardRouter
from cubby.metadata.shares import Sharing
from cubby.metadata.users import Disabled, UserDirectory, token_hash
from cubby.metadata.writes import content_hash_of
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
        """The directory, chunk database and shards (`cubby.metadata.shards`): every
        namespace-keyed call below runs on the shard holding its namespace, everything keyed
        by user or token on the directory, chunk rows on the chunk database."""
        directory = self.router.directory
        self.challenges = Challenges(load_challenge_secret(directory))
        """Possession nonces under the server's secret (see metadata/possession.py)."""
        self.users = UserDirectory(directory, self.router)
        self.shards = ShardSet(self.router, self.challenges)
        self.chunks = ChunkAccess(self.router.chunks, self.challenges, self.router)
        self.collector = GarbageCollector(self.router.chunks, self.router)
        self.sharing = Sharing(directory, self.router)
        """Shared folders: share, accept, remove, leave, unshare, list (see metadata/shares.py);
        on a sharded deployment each operation runs as steps, each on its own namespace's
        shard (metadata/sharded_shares.py, metadata/share_steps.py)."""
        self.moves = CrossMoves(directory, self.stat, router=self.router)
        """Moves between namespaces, with intents and recovery (see metadata/moves.py), each
        step on its own namespace's shard."""
        self.links = LinkStore(self.router)
        """Public links (`cubby.metadata.links`), each on its namespace's shard."""
        self._accounts: Accounts | None = None

    @property
    def db(self) -> Database:
        """The directory database (users, tokens, accounts). Namespace data is on
        ``router.db_for(ns)``, chunk rows on ``router.chunks``: reach them through those."""
        return self.router.directory

    @property
    def accounts(self) -> Accounts:
        """Passwords and web sessions (`cubby.metadata.accounts.Accounts`), made on first use:
        argon2 is loaded only by processes that log people in."""
        if self._accounts is None:
            from cubby.metadata.accounts import Accounts

            self._accounts = Accounts(self.router.directory, self.principal_of)
        return self._accounts

    def close(self) -> None:
        self.router.close()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Within, on this thread, the reads of each database join one read transaction per
        database (`Database.reading`; one in all on a single database)."""
        with contextlib.ExitStack() as stack:
            for db in self.router.databases():
                stack.enter_context(db.reading())
            yield

    # -- accounts (cubby.metadata.users, cubby.metadata.memberships) -----------------------
    def create_user(self, name: str) -> tuple[User, str]:
        return self.users.create_user(name)

    def get_user(self, name: str) -> User:
        return self.users.get_user(name)

    def list_users(self) -> builtins.list[dict[str, object]]:
        return self.users.list_users()

    def create_token(self, user_id: int, label: str = "") -> tuple[int, str]:
        return self.users.create_token(user_id, label)

    def list_tokens(self, user_id: int) -> builtins.list[dict[str, object]]:
        return self.users.list_tokens(user_id)

    def revoke_token(self, user_id: int, token_id: int) -> None:
        self.users.revoke_token(user_id, token_id)

    def set_disabled(self, name: str, disabled: bool, *, revoke_tokens: bool = False) -> Disabled:
        return self.users.set_disabled(name, disabled, revoke_tokens=revoke_tokens)

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
        if self.router.single:
            return membership.user_can_read(self.router.directory, user_id, ns_id)
        return membership.user_can_read_sharded(self.router.directory, user_id, ns_id)

    def memberships(self, user_id: int, root_ns: int) -> tuple[dict[int, Role], dict[str, int]]:
        if self.router.single:
            return membership.memberships(self.router.directory, user_id, root_ns)
        return membership.memberships_sharded(self.router.directory, self.router.db_for(root_ns), user_id, root_ns)

    def deleted(self, ns_id: int, folder: str) -> builtins.list[dict[str, Any]]:
        """Files deleted directly in ``folder`` of ``ns_id`` (`cubby.metadata.deleted`)."""
        return deleted_in(self.router.db_for(ns_id), ns_id, folder)

    # -- reads (cubby.metadata.reads), on the namespace's shard ----------------------------
    def head(self, ns_id: int) -> int:
        return self.shards.of(ns_id).reads.head(ns_id)

    def heads(self, ns_ids: Iterable[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for mods, nss in self.shards.group(ns_ids):
            out.update(mods.reads.heads(nss))
        return out

    def stat(self, ns_id: int, path: str) -> Entry:
        return self.shards.of(ns_id).reads.stat(ns_id, path)

    def list(
        self, ns_id: int, path: str, recursive: bool = False, cursor: str | None = None, limit: int = 1000
    ) -> Listing:
        return self.shards.of(ns_id).reads.list(ns_id, path, recursive, cursor, limit)

    def history(self, ns_id: int, path: str, limit: int = 100) -> builtins.list[Revision]:
        return self.shards.of(ns_id).reads.history(ns_id, path, limit)

    def blocklist(self, ns_id: int, path: str, rev: int | None = None) -> tuple[Entry, builtins.list[ChunkRef]]:
        return self.shards.of(ns_id).reads.blocklist(ns_id, path, rev)

    def blocklists(
        self, ns_id: int, paths_: Sequence[str]
    ) -> builtins.list[tuple[Entry, builtins.list[ChunkRef]] | CubbyError]:
        return self.shards.of(ns_id).reads.blocklists(ns_id, paths_)

    def journal(self, ns_id: int, after: int, limit: int = 1000) -> builtins.list[JournalEntry]:
        return self.shards.of(ns_id).reads.journal(ns_id, after, limit)

    # -- writes (cubby.metadata.writes), on the namespace's shard --------------------------
    def commit(self, user_id: int, ns_id: int, req: CommitRequest, readable: Iterable[int] = ()) -> CommitResult:
        return self.shards.of(ns_id).writes.commit(user_id, ns_id, req, readable)

    def commit_many(
        self, user_id: int, ns_id: int, reqs: Sequence[CommitRequest], readable: Iterable[int] = ()
    ) -> builtins.list[CommitResult | CubbyError]:
        return self.shards.of(ns_id).writes.commit_many(user_id, ns_id, reqs, readable)

    def mkdir(self, user_id: int, ns_id: int, path: str) -> Entry:
        return self.shards.of(ns_id).writes.mkdir(user_id, ns_id, path)

    def mkdir_many(self, user_id: int, ns_id: int, paths_: Sequence[str]) -> builtins.list[Entry | CubbyError]:
        return self.shards.of(ns_id).writes.mkdir_many(user_id, ns_id, paths_)

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
        return self.shards.of(ns_id).writes.delete(
            user_id, ns_id, path, expected_rev, forget_through=forget_through, unchanged_since=unchanged_since
        )

    def move(self, user_id: int, ns_id: int, src: str, dst: str, expected_rev: int | None = None) -> Entry:
        return self.shards.of(ns_id).writes.move(user_id, ns_id, src, dst, expected_rev)

    def restore(self, user_id: int, ns_id: int, path: str, rev: int) -> Entry:
        return self.shards.of(ns_id).writes.restore(user_id, ns_id, path, rev)

    # -- chunks (cubby.metadata.chunks) and collection (cubby.metadata.collector) ----------
    def chunk_readable(self, ns_ids: Iterable[int], hashes: Sequence[str]) -> set[str]:
        return self.chunks.chunk_readable(ns_ids, hashes)

    def readable_sizes(self, ns_ids: Iterable[int], hashes: Sequence[str]) -> dict[str, int]:
        return self.chunks.readable_sizes(ns_ids, hashes)

    def ingest_chunks(self, ns_id: int, items: Sequence[tuple[str, bytes]], blocks_store: BlockStore) -> int:
        return self.chunks.ingest_chunks(ns_id, items, blocks_store)

    def ingest_direct(self, ns_id: int, pack: str, chunks: Sequence[tuple[str, int]], blocks_store: BlockStore) -> int:
        return self.chunks.ingest_direct(ns_id, pack, chunks, blocks_store)

    def direct_put_ticket(self, user_id: int, ns_id: int, pack: str, chunks: Sequence[tuple[str, int]], expires: int) -> str:
        return self.chunks.direct_put_ticket(user_id, ns_id, pack, chunks, expires)

    def challenge(self, user_id: int, ns_id: int, chunk_hash: str, size: int, *, at: float | None = None) -> str:
        return self.chunks.challenge(user_id, ns_id, chunk_hash, size, at=at)

    def proof_key(self, user_id: int, ns_id: int) -> dict[str, Any]:
        return self.chunks.proof_key(user_id, ns_id)

    def accept_proofs(
        self, user_id: int, ns_id: int, claims: Sequence[Claim], blocks_store: ChunkReader,
        *, within: Iterable[int] | None = None,
    ) -> Checked:
        return self.chunks.accept_proofs(user_id, ns_id, claims, blocks_store, within=within)

    def collect_garbage(
        self, blocks_store: BlockStore, grace_seconds: float, *, fault: Callable[[str], None] | None = None,
        progress: Callable[[GcStats], None] | None = None,
    ) -> GcStats:
        return self.collector.collect_garbage(blocks_store, grace_seconds, fault=fault, progress=progress)

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

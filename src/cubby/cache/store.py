"""`CachedStore`: the metadata store with its hot reads behind a `MetadataCache`.

Behaviour by wrapping: the server holds a `CachedStore`, and the plain `SqlMetadataStore` is
underneath; every method not named here passes through unchanged (and so reads the database).

What is cached, under which key (the design is in docs/ARCHITECTURE.md, "The metadata cache"):

=====================================  ====================================  ==================
key                                    value                                 made stale by
=====================================  ====================================  ==================
``tok:<token hash>``                   user id, name, root namespace, id     revoking it;
                                                                             kept
                                                                             `TOKEN_SECONDS`
``mem:<user id>``                      roles by namespace, mounts            share, accept,
                                                                             remove, leave,
                                                                             unshare; a move,
                                                                             delete or restore
                                                                             in the user's root
``head:<ns>``                          the namespace's journal head          every write to ns
``stat|list|bl:<ns>:<head>:<digest>``  an entry, a page, a blocklist         nothing: keyed by
                                                                             the head
``ans:<ns>:<digest>``                  a head and an encoded HTTP answer     nothing: served
                                       (`answer`)                            only at that head
=====================================  ====================================  ==================

The first three are *mutable* keys, read and filled under leases, fenced by writers before
their commit and invalidated after it, before they return (so before the server
acknowledges): `CachedStore.writing`. The fence is what keeps a writer that dies or loses
the cache between the two from leaving an old value behind. The rest name
the head they were read at, so a write makes them unreachable instead of wrong: the database
read that fills one runs after the head was read, so it holds that head's state or a newer
one, never an older one. (``ans:`` keys hold their head instead of naming it, so that the
head and the answer are read in one round trip; the rule is the same.)

Every answer comes after its invalidation, errors included: a write that fails (``no such
token``, a conflict, ``not a member``) still invalidates the keys it names, and with them
everything this process could not invalidate before. The failure may be the retry of a
write that committed while its invalidation did not land (a 503 below, or a process killed
between its commit and its invalidation), and its answer tells the client the change is
there, so it acknowledges that change.

A failed invalidation is retried for ``invalidation_deadline`` seconds; if the cache still
does not confirm it, the write raises `CacheUnavailable` (503): committed but not
acknowledged, as with a lost reply. (A cache that refuses connections is down and empty, so
that is a success: see `cubby.cache.base`.)
"""

from __future__ import annotations

import builtins
import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson

from cubby.cache.base import VALUE_SECONDS, CacheUnavailable, MetadataCache, digest, new_lease
from cubby.cache.fencekeeper import FenceKeeper
from cubby.errors import CubbyError, NotFound
from cubby.metadata.store import SqlMetadataStore
from cubby.metadata.users import Disabled, token_hash
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
    User,
)

if TYPE_CHECKING:
    from cubby.blockstore.base import BlockStore
    from cubby.metadata.accounts import Accounts
    from cubby.metadata.base import MetadataStore
    from cubby.metadata.engine import Database
    from cubby.metadata.links import LinkStore
    from cubby.metadata.possession import Checked, ChunkReader, Claim
    from cubby.metadata.shares import SharingChange

Counter = Callable[[str, str], None]
"""Called with (cache name, ``hit`` or ``miss``) for every lookup (the server's metrics)."""


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


TOKEN_SECONDS = 2.0
"""How long a ``tok:`` value is kept. A token revoked through a server is invalidated at once
(`CachedStore.revoke_token`); this bounds what nobody invalidates: a user disabled by
``cubby user disable``, which writes the database from the command line and cannot reach an
in-process cache (so it waits this long before it returns). Short costs nothing: one indexed
read per token every two seconds."""

OWNERS_KEPT = 100_000
"""At most this many token owners are remembered (`CachedStore._both`); then they are forgotten."""


class CacheMiss(Exception):
    """A lookup in `CachedStore.hits_only` mode found no value (and took no lease)."""


class _Mode(threading.local):
    hits_only = False


class CachedStore:
    """A `SqlMetadataStore` whose token, membership, head, stat, list and blocklist reads go
    through ``cache`` (module docstring); everything else is the store's own."""

    def __init__(
        self, store: SqlMetadataStore, cache: MetadataCache, *, count: Counter | None = None,
        invalidation_deadline: float = 2.0,
    ) -> None:
        self.store = store
        self.cache = cache
        self.count = count
        self.invalidation_deadline = invalidation_deadline
        self._pending: set[str] = set()
        self._pending_lock = threading.Lock()
        self.sharing = _CachedSharing(self, store.sharing)
        self.moves = _CachedMoves(self, store.moves)
        self._mode = _Mode()
        self._peek: Callable[[str], bytes | None] | None = getattr(cache, "peek", None)
        """`LocalCache.peek` when the cache is in-process (`hits_only`), else None."""
        self._owners: dict[str, int] = {}
        """Token key -> user id, for tokens this process has seen (`_both`)."""
        self.fences = FenceKeeper(cache.fence)
        """Renews the fences of a write that runs longer than a third of their life."""
        store.router.use_cache(self)  # placements (``place:<ns>``) read through this cache too

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def close(self) -> None:
        self.fences.close()
        self.cache.close()
        self.store.close()

    # -- passed through unchanged (named, so that mypy checks the `MetadataStore` Protocol) --
    @property
    def db(self) -> Database:
        return self.store.db

    @property
    def links(self) -> LinkStore:
        return self.store.links

    def deleted(self, ns_id: int, folder: str) -> builtins.list[dict[str, Any]]:
        return self.store.deleted(ns_id, folder)

    def reading(self) -> contextlib.AbstractContextManager[None]:
        return self.store.reading()

    @property
    def accounts(self) -> Accounts:
        return self.store.accounts

    def create_user(self, name: str) -> tuple[User, str]:
        return self.store.create_user(name)

    def get_user(self, name: str) -> User:
        return self.store.get_user(name)

    def list_users(self) -> builtins.list[dict[str, object]]:
        return self.store.list_users()  # an admin's listing: from the database, never the cache

    def create_token(self, user_id: int, label: str = "") -> tuple[int, str]:
        return self.store.create_token(user_id, label)

    def list_tokens(self, user_id: int) -> builtins.list[dict[str, object]]:
        return self.store.list_tokens(user_id)

    def user_can_read(self, user_id: int, ns_id: int) -> bool:
        return self.store.user_can_read(user_id, ns_id)

    def heads(self, ns_ids: Iterable[int]) -> dict[int, int]:
        return self.store.heads(ns_ids)

    def history(self, ns_id: int, path: str, limit: int = 100) -> builtins.list[Revision]:
        return self.store.history(ns_id, path, limit)

    def blocklists(
        self, ns_id: int, paths_: Sequence[str]
    ) -> builtins.list[tuple[Entry, builtins.list[ChunkRef]] | CubbyError]:
        return self.store.blocklists(ns_id, paths_)

    def journal(self, ns_id: int, after: int, limit: int = 1000) -> builtins.list[JournalEntry]:
        return self.store.journal(ns_id, after, limit)

    def mkdir_many(self, user_id: int, ns_id: int, paths_: Sequence[str]) -> builtins.list[Entry | CubbyError]:
        with self.writing([ns_id]):
            return self.store.mkdir_many(user_id, ns_id, paths_)

    def chunk_readable(self, ns_ids: Iterable[int], hashes: Sequence[str]) -> set[str]:
        return self.store.chunk_readable(ns_ids, hashes)

    def readable_sizes(self, ns_ids: Iterable[int], hashes: Sequence[str]) -> dict[str, int]:
        return self.store.readable_sizes(ns_ids, hashes)

    def ingest_chunks(self, ns_id: int, items: Sequence[tuple[str, bytes]], blocks_store: BlockStore) -> int:
        return self.store.ingest_chunks(ns_id, items, blocks_store)

    def ingest_direct(self, ns_id: int, pack: str, chunks: Sequence[tuple[str, int]], blocks_store: BlockStore) -> int:
        return self.store.ingest_direct(ns_id, pack, chunks, blocks_store)

    def direct_put_ticket(self, user_id: int, ns_id: int, pack: str, chunks: Sequence[tuple[str, int]], expires: int) -> str:
        return self.store.direct_put_ticket(user_id, ns_id, pack, chunks, expires)

    def challenge(self, user_id: int, ns_id: int, chunk_hash: str, size: int, *, at: float | None = None) -> str:
        return self.store.challenge(user_id, ns_id, chunk_hash, size, at=at)

    def proof_key(self, user_id: int, ns_id: int) -> dict[str, Any]:
        return self.store.proof_key(user_id, ns_id)

    def accept_proofs(
        self, user_id: int, ns_id: int, claims: Sequence[Claim], blocks_store: ChunkReader,
        *, within: Iterable[int] | None = None,
    ) -> Checked:
        return self.store.accept_proofs(user_id, ns_id, claims, blocks_store, within=within)

    def collect_garbage(self, blocks_store: BlockStore, grace_seconds: float, **kw: Any) -> GcStats:
        return self.store.collect_garbage(blocks_store, grace_seconds, **kw)

    # -- the read-through step ------------------------------------------------------------
    def through(
        self, key: str, load: Callable[[], Any], *, leased: bool = True, ttl: float = VALUE_SECONDS
    ) -> Any:
        """The JSON value at ``key``, or ``load()`` (the database) stored there for ``ttl``
        seconds: under a lease for a mutable key, plainly for one keyed by a head."""
        return orjson.loads(self.through_raw(key, lambda: _dumps(load()), leased=leased, ttl=ttl))

    def through_raw(
        self, key: str, load: Callable[[], bytes], *, leased: bool = True, ttl: float = VALUE_SECONDS
    ) -> bytes:
        """`through` for a value kept as the bytes ``load()`` returns. In `hits_only` mode a
        miss raises `CacheMiss` before anything is taken or read."""
        if self._mode.hits_only:
            raw = self._peek(key) if self._peek is not None else None
            if raw is None:
                raise CacheMiss(key)
            self._counted("hit")
            return raw
        raw, lease = self.cache.get(key)
        if raw is not None:
            self._counted("hit")
            return raw
        self._counted("miss")
        value = load()  # after taking the lease: see cubby.cache.base
        if not leased:
            self.cache.put(key, value, ttl)
        elif lease is not None:
            self.cache.fill(key, value, lease, ttl)
        return value

    @property
    def local(self) -> bool:
        """Whether the cache lives in this process (its hits cost no I/O: `hits_only`)."""
        return self._peek is not None

    @contextlib.contextmanager
    def hits_only(self) -> Iterator[None]:
        """Within, on this thread, a lookup answers only from a hit of the in-process cache
        and raises `CacheMiss` otherwise, before any lease, database read or network call:
        the server runs a read this way on its event loop and, on `CacheMiss`, again in a
        thread. Only the cached reads (`authenticate`, `head`, `stat`, `list`, `blocklist`,
        `answer`) check it: a block run in this mode calls nothing else of the store."""
        self._mode.hits_only = True
        try:
            yield
        finally:
            self._mode.hits_only = False

    def answer(self, ns_id: int, parts: tuple[object, ...], build: Callable[[MetadataStore], bytes]) -> bytes:
        """An encoded answer about namespace ``ns_id`` as it is at its current head.

        Kept under ``ans:<ns>:<digest of parts>`` (``parts`` name everything else the answer
        depends on) as ``<head>`` + newline + the answer, and read in the same round trip as
        ``head:<ns>``: it is served only when the head it was built at is the current one.
        ``build`` reads the plain store after the head was read, so the bytes hold that
        head's state or a newer one, as for every value named by a head; a builder that
        stores an older answer over a newer one only causes a miss. (The head is a mutable,
        leased key; on its miss it is read through as usual.)"""
        keys = [f"head:{int(ns_id)}", f"ans:{int(ns_id)}:{digest(*parts)}"]
        if self._mode.hits_only:
            assert self._peek is not None
            head_raw, held = self._peek(keys[0]), self._peek(keys[1])
        else:
            head_raw, held = self.cache.values(keys)
        if head_raw is None:
            head = self.head(ns_id)  # counts its own hit or miss; CacheMiss in hits_only mode
        else:
            self._counted("hit")
            head = int(orjson.loads(head_raw))
        stamp = b"%d\n" % head
        if held is not None and held.startswith(stamp):
            self._counted("hit")
            return held[len(stamp):]
        if self._mode.hits_only:
            raise CacheMiss(keys[1])
        self._counted("miss")
        value = build(self.store)
        self.cache.put(keys[1], stamp + value)
        return value

    def _counted(self, result: str) -> None:
        if self.count is not None:
            self.count(self.cache.name, result)

    def invalidate(self, keys: Iterable[str], token: str | None = None) -> None:
        """Delete ``keys`` from the cache (and writer ``token``'s fence on them), retrying until
        the deadline; then `CacheUnavailable`. Keys that could not be invalidated are tried
        again with every later invalidation of this process, so the unacknowledged change
        becomes visible as soon as the cache answers again (or when the value expires); their
        fence, if it stayed, expires by itself."""
        with self._pending_lock:
            todo = sorted(set(keys) | self._pending)
        try:
            self._retried(lambda ks: self.cache.invalidate(ks, token), todo)
        except CacheUnavailable:
            with self._pending_lock:
                self._pending.update(todo)
            raise
        with self._pending_lock:
            self._pending.difference_update(todo)

    def _retried(self, op: Callable[[list[str]], None], keys: list[str]) -> None:
        """``op(keys)``, retried with backoff until ``invalidation_deadline``."""
        deadline = time.monotonic() + self.invalidation_deadline
        pause = 0.01
        while True:
            try:
                return op(keys)
            except CacheUnavailable:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(0.2, pause * 2)

    @contextmanager
    def writing(
        self, ns_ids: Iterable[int] = (), users: Iterable[int] = (), other: Iterable[str] = ()
    ) -> Iterator[set[str]]:
        """Around a write to the heads of ``ns_ids``, the memberships of ``users`` and the
        ``other`` keys: fence those keys before it (if that is not confirmed,
        `CacheUnavailable` and nothing is written), keep the fences alive while it runs
        (`FenceKeeper`), and invalidate them after it, whatever it answers; keys added to the
        set it yields are invalidated too."""
        keys = keys_of(ns_ids, users) | set(other)
        token = new_lease()  # this write's name on its fences: see cubby.cache.base, `fence`
        fenced = sorted(keys)
        self._retried(lambda ks: self.cache.fence(ks, token), fenced)
        try:
            with self.fences.holding(fenced, token):  # renewed while the write runs
                yield keys
        finally:
            self.invalidate(keys, token)

    # -- who is asking --------------------------------------------------------------------
    def authenticate(self, token: str, *, fresh: bool = False) -> Principal:
        if fresh:
            return self.store.authenticate(token)

        def load() -> list[Any]:
            return list(self.store.token_owner(token))

        if not token:
            uid, name, root_ns, token_id = load()
            return self.principal_of(int(uid), str(name), int(root_ns), token_id=int(token_id))
        key = f"tok:{token_hash(token)}"
        both = self._both(key)
        if both is not None:
            return both
        uid, name, root_ns, token_id = self.through(key, load, ttl=TOKEN_SECONDS)
        if len(self._owners) >= OWNERS_KEPT:
            self._owners.clear()
        self._owners[key] = int(uid)
        return self.principal_of(int(uid), str(name), int(root_ns), token_id=int(token_id))

    def _both(self, key: str) -> Principal | None:
        """A remote cache's hits for token ``key`` and its owner's memberships, read in one
        round trip (`MetadataCache.values`), when this process has seen the token before; None
        (read them the usual way) on any miss. Which user a token belongs to never changes, so
        ``_owners`` (token key -> user id) may be kept here; whether the token is still valid,
        and the memberships, come from the cache as always."""
        uid = self._owners.get(key)
        if uid is None or self.local or self._mode.hits_only:
            return None
        tok_raw, mem_raw = self.cache.values([key, f"mem:{uid}"])
        if tok_raw is None or mem_raw is None:
            return None
        owner, name, root_ns, token_id = orjson.loads(tok_raw)
        if int(owner) != uid:
            return None
        self._counted("hit")
        self._counted("hit")
        roles, mounts = orjson.loads(mem_raw)
        return _principal(uid, str(name), int(root_ns), int(token_id), roles, mounts)

    def principal_of(self, user_id: int, name: str, root_ns: int, *, token_id: int = 0) -> Principal:
        def load() -> list[Any]:
            roles, mounts = self.store.memberships(user_id, root_ns)
            return [{str(k): v for k, v in roles.items()}, mounts]

        roles, mounts = self.through(f"mem:{user_id}", load)
        return _principal(user_id, name, root_ns, token_id, roles, mounts)

    def revoke_token(self, user_id: int, token_id: int) -> None:
        hashed = self.store.token_hash_of(token_id)
        with self.writing(other=[f"tok:{hashed}"] if hashed is not None else []):
            self.store.revoke_token(user_id, token_id)

    def set_disabled(self, name: str, disabled: bool, *, revoke_tokens: bool = False) -> Disabled:
        """The store's `set_disabled`, then the user's ``tok:`` keys invalidated: after the
        commit is enough, since invalidating also ends a lease taken before it (so a reader
        of the old state cannot fill it back)."""
        done = self.store.set_disabled(name, disabled, revoke_tokens=revoke_tokens)
        self.invalidate([f"tok:{h}" for h in done.token_hashes])
        return done

    # -- reads ----------------------------------------------------------------------------
    def head(self, ns_id: int) -> int:
        return int(self.through(f"head:{int(ns_id)}", lambda: self.store.head(ns_id)))

    def stat(self, ns_id: int, path: str) -> Entry:
        key = f"stat:{ns_id}:{self.head(ns_id)}:{digest(path)}"
        return Entry.from_dict(self.through(key, lambda: self.store.stat(ns_id, path).to_dict(), leased=False))

    def list(
        self, ns_id: int, path: str, recursive: bool = False, cursor: str | None = None, limit: int = 1000
    ) -> Listing:
        def load() -> dict[str, Any]:
            page = self.store.list(ns_id, path, recursive, cursor, limit)
            return {"entries": [e.to_dict() for e in page.entries], "cursor": page.cursor, "has_more": page.has_more}

        key = f"list:{ns_id}:{self.head(ns_id)}:{digest(path, recursive, cursor, limit)}"
        d = self.through(key, load, leased=False)
        return Listing([Entry.from_dict(e) for e in d["entries"]], d["cursor"], bool(d["has_more"]))

    def blocklist(self, ns_id: int, path: str, rev: int | None = None) -> tuple[Entry, builtins.list[ChunkRef]]:
        def load() -> dict[str, Any]:
            entry, chunks = self.store.blocklist(ns_id, path, rev)
            return {"entry": entry.to_dict(), "chunks": [[c.hash, c.size] for c in chunks]}

        d = self.through(f"bl:{ns_id}:{self.head(ns_id)}:{digest(path, rev)}", load, leased=False)
        return Entry.from_dict(d["entry"]), [ChunkRef(str(h), int(s)) for h, s in d["chunks"]]

    # -- writes: the store's, then the invalidation, before anything is acknowledged --------
    def commit(self, user_id: int, ns_id: int, req: CommitRequest, readable: Iterable[int] = ()) -> CommitResult:
        with self.writing([ns_id]):
            return self.store.commit(user_id, ns_id, req, readable)

    def commit_many(self, user_id: int, ns_id: int, *args: Any, **kw: Any) -> Any:
        with self.writing([ns_id]):
            return self.store.commit_many(user_id, ns_id, *args, **kw)

    def mkdir(self, user_id: int, ns_id: int, path: str) -> Entry:
        with self.writing([ns_id]):
            return self.store.mkdir(user_id, ns_id, path)

    def delete(self, user_id: int, ns_id: int, *args: Any, **kw: Any) -> Entry:
        with self.writing([ns_id], [user_id]):  # a mount in the user's root may go
            return self.store.delete(user_id, ns_id, *args, **kw)

    def move(self, user_id: int, ns_id: int, *args: Any, **kw: Any) -> Entry:
        with self.writing([ns_id], [user_id]):  # a mount in the user's root may move
            return self.store.move(user_id, ns_id, *args, **kw)

    def restore(self, user_id: int, ns_id: int, path: str, rev: int) -> Entry:
        with self.writing([ns_id], [user_id]):
            return self.store.restore(user_id, ns_id, path, rev)


def _principal(
    user_id: int, name: str, root_ns: int, token_id: int, roles: dict[str, Any], mounts: dict[str, Any]
) -> Principal:
    """The `Principal` of a token's owner and their cached memberships (``mem:`` as stored)."""
    return Principal(
        user_id=user_id, name=name, root_ns=root_ns, token_id=token_id,
        namespaces={int(k): v for k, v in roles.items()}, mounts={str(k): int(v) for k, v in mounts.items()},
    )


def keys_of(ns_ids: Iterable[int] = (), users: Iterable[int] = ()) -> set[str]:
    """The mutable keys a write to ``ns_ids`` and to the memberships of ``users`` changes."""
    return {f"head:{int(n)}" for n in ns_ids} | {f"mem:{int(u)}" for u in users}


class _CachedSharing:
    """`Sharing` with every change followed by its invalidation: the heads and the users that
    its `SharingChange` names, and the caller."""

    def __init__(self, cached: CachedStore, sharing: Any) -> None:
        self.cached = cached
        self.inner = sharing

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _changing(
        self, ns_id: int, users: set[int], change: Callable[[], SharingChange]
    ) -> SharingChange:
        """Run ``change`` inside `CachedStore.writing`: fenced (and invalidated even if it
        fails: it may be the retry of one that committed before its process died) are what
        it may change, read before it runs: the namespace it names, ``users`` (the caller, an
        invitee, a removed member) and every member of the namespace, with the heads of all
        their roots (where a mount comes or goes); what its `SharingChange` names beyond
        those (someone who became a member between that read and the change) is invalidated
        after it."""
        self.recover()  # an interrupted operation of a process gone first, fenced (`recover`)
        roots = self.inner.roots_around(ns_id, users)
        with self.cached.writing([ns_id, *roots.values()], {*users, *roots}) as keys:
            done = change()
            keys.update(keys_of(done.heads, done.users))
            return done

    def share(self, user_id: int, root_ns: int, path: str, invitee: Any, role: Any = "editor") -> SharingChange:
        users = {user_id}
        try:
            users.add(self.cached.store.get_user(str(invitee)).id)
        except NotFound:
            pass  # no such user: the change will say so
        return self._changing(root_ns, users, lambda: self.inner.share(user_id, root_ns, path, invitee, role))

    def accept(self, user_id: int, root_ns: int, ns_id: int) -> SharingChange:
        return self._changing(root_ns, {user_id}, lambda: self.inner.accept(user_id, root_ns, ns_id))

    def remove_member(self, user_id: int, ns_id: int, member: Any) -> SharingChange:
        users = {user_id}
        try:
            users.add(self.cached.store.get_user(str(member)).id)
        except NotFound:
            pass  # no such user: the change will say so
        return self._changing(ns_id, users, lambda: self.inner.remove_member(user_id, ns_id, member))

    def leave(self, user_id: int, ns_id: int) -> SharingChange:
        return self._changing(ns_id, {user_id}, lambda: self.inner.leave(user_id, ns_id))

    def unshare(self, user_id: int, ns_id: int) -> SharingChange:
        return self._changing(ns_id, {user_id}, lambda: self.inner.unshare(user_id, ns_id))

    def recover(self) -> int:
        """Recovery of shares and membership operations across shards writes the roots and
        the shared namespace: fenced and invalidated like any other write, and the members'
        principals with them. Runs at server start and before each sharing change."""
        return self.inner.recover(around=lambda ns, users: self.cached.writing(ns, users))  # type: ignore[no-any-return]

    def list_shares(self, user_id: int) -> builtins.list[dict[str, Any]]:
        return self.inner.list_shares(user_id)  # type: ignore[no-any-return]

    def cut(self, ns_id: int) -> int | None:
        return self.inner.cut(ns_id)  # type: ignore[no-any-return]


class _CachedMoves:
    """`CrossMoves` with each move followed by the invalidation of both namespaces."""

    def __init__(self, cached: CachedStore, moves: Any) -> None:
        self.cached = cached
        self.inner = moves

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def move(self, user_id: int, src_ns: int, src: str, dst_ns: int, dst: str, *args: Any, **kw: Any) -> Entry:
        with self.cached.writing([src_ns, dst_ns], [user_id]):
            return self.inner.move(user_id, src_ns, src, dst_ns, dst, *args, **kw)  # type: ignore[no-any-return]

    def recover(self) -> int:
        """Recovery writes both namespaces of each move it finishes or undoes: fenced and
        invalidated like any other write."""
        return self.inner.recover(around=lambda ns: self.cached.writing(ns))  # type: ignore[no-any-return]


if TYPE_CHECKING:
    _satisfies: type[MetadataStore] = CachedStore
    """mypy proves here that the cached store meets the Protocol the server is typed against."""

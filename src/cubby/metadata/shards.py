"""`ShardRouter`: which database holds a namespace, and the directory every request needs.

A deployment has one *directory* database (users, tokens, passwords, web sessions, settings,
link tokens, ``placements``, ``shards`` and the ``memberships`` copy) and N *shard* databases
holding the namespaces (nodes, revisions, journal, chunk references, members, intents). With
only ``--db URL`` the one database is the directory and the only shard, named ``main``
(`ShardRouter.single`), and nothing is looked up: every call runs on it as before sharding.
The chunk tables (``blocks``, ``chunk_tombstones``, ``chunk_index``, ``packs``,
``deleted_packs``) are keyed by hash and live in the *chunk database*, the directory's unless
named otherwise (`ShardRouter.chunks`). The design and its arguments: docs/SHARDING.md.

Guarantees:

- `ShardRouter.placement` answers what the directory's ``placements`` row says, through the
  metadata cache when one is attached (`use_cache`, key ``place:<ns>``); whoever changes a
  placement invalidates that key before acknowledging (`forget` does it for this process and
  the cache), so no answer is older than the last acknowledged placement change.
- `allocate_ns_id` gives an id that no other shard gives, with no global sequence: the top
  bits are the shard's number (the directory's ``shards`` table, written once per shard), the
  low `LOCAL_BITS` a counter on the shard itself. Ids stay below 2**53 (the web app reads them
  in JavaScript); ids that existed before sharding are below 2**40 and are shard 0's
  (``main``), whose counter starts above them. A namespace keeps its id when it moves.
- `write_membership` / `drop_memberships` keep the directory's copy of ``members``; on a single
  database they join the caller's transaction (one commit, as before).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from cubby.errors import CubbyError, NotFound
from cubby.metadata.engine import Database
from cubby.metadata.schema import memberships, namespaces, placements, settings, shards

MAIN = "main"
"""The name of the only shard of a single-database deployment, and of the shard that holds
every namespace that existed before sharding (migration 0009 places them there)."""

LOCAL_BITS = 40
"""Bits of a namespace id that count within its shard: 2**40 namespaces per shard."""
MAX_SHARDS = 2 ** (53 - LOCAL_BITS)
"""Shard numbers are below this, so that every id is below 2**53 (a JavaScript number)."""

_COUNTER_KEY = "ns_next"
"""The shard's own ``settings`` row holding its next local namespace number."""


class UnknownShard(CubbyError):
    """A placement names a shard this process was not configured with (its ``--shard`` flags
    differ from the other processes'): a deployment error, not the client's."""

    code = "unknown_shard"
    status = 503


@dataclass(frozen=True)
class Placement:
    """Where a namespace lives: its shard's name, ``live`` or ``moving``, and the epoch that
    grows with each move (a transaction routed by an older epoch finds the namespace gone)."""

    ns_id: int
    shard: str
    state: str = "live"
    epoch: int = 1


class PlacementCache(Protocol):
    """What the router needs of the metadata cache (`cubby.cache.store.CachedStore` has it)."""

    def through(self, key: str, load: Callable[[], Any], *, leased: bool = True) -> Any: ...

    def invalidate(self, keys: Iterable[str]) -> None: ...


def placement_key(ns_id: int) -> str:
    """The cache key of a namespace's placement."""
    return f"place:{int(ns_id)}"


class ShardRouter:
    """The directory, the chunk database and the shards of one deployment (module docstring)."""

    def __init__(
        self,
        directory: Database,
        shards: Mapping[str, Database] | None = None,
        *,
        chunks: Database | None = None,
        place_new: str | None = None,
    ) -> None:
        self.directory = directory
        """Users, tokens, link tokens, passwords, sessions, settings, placements, memberships."""
        self.shards: dict[str, Database] = dict(shards) if shards else {MAIN: directory}
        """The shard databases by name (the name is what ``placements`` records)."""
        self.chunks = chunks or directory
        """The chunk database: ``blocks``, tombstones, the chunk index, packs."""
        if place_new is not None and place_new not in self.shards:
            raise UnknownShard(f"--place-new names {place_new!r}, which is not one of the shards ({', '.join(self.shards)})")
        self._place_new = place_new
        self._cache: PlacementCache | None = None
        self._numbers: dict[str, int] = {}

    @property
    def single(self) -> bool:
        """Whether the directory is the only shard: no placement is ever read, every call runs
        on the one database in one transaction, exactly as before sharding."""
        return len(self.shards) == 1 and next(iter(self.shards.values())) is self.directory

    def databases(self) -> list[Database]:
        """Every distinct database (directory, chunk database, shards), each once."""
        seen: dict[int, Database] = {}
        for db in (self.directory, self.chunks, *self.shards.values()):
            seen.setdefault(id(db), db)
        return list(seen.values())

    def use_cache(self, cache: PlacementCache | None) -> None:
        """Read placements through ``cache`` from now on (the server's metadata cache)."""
        self._cache = cache

    def placement(self, ns_id: int) -> Placement:
        """Where ``ns_id`` lives now (`NotFound` if no shard holds it). On a single database
        this reads nothing: every namespace is on ``main``."""
        if self.single:
            return Placement(int(ns_id), MAIN)

        def load() -> list[Any]:
            row = self.directory.read(
                lambda c: c.execute(
                    select(placements.c.shard, placements.c.state, placements.c.epoch).where(
                        placements.c.ns_id == int(ns_id)
                    )
                ).first()
            )
            if row is None:  # raised, not cached: the id may be given to a namespace later
                raise NotFound(f"no namespace {int(ns_id)}")
            return [str(row.shard), str(row.state), int(row.epoch)]

        found = self._cache.through(placement_key(ns_id), load) if self._cache is not None else load()
        return Placement(int(ns_id), str(found[0]), str(found[1]), int(found[2]))

    def db_for(self, ns_id: int) -> Database:
        """The database of the shard that holds ``ns_id`` (the directory when `single`)."""
        if self.single:
            return self.directory
        return self.shard_db(self.placement(ns_id).shard)

    def shard_db(self, name: str) -> Database:
        """The database of shard ``name``; `UnknownShard` if this process has none by that name."""
        try:
            return self.shards[name]
        except KeyError:
            raise UnknownShard(
                f"a namespace is placed on shard {name!r}, which this server was not started with "
                f"(its shards: {', '.join(self.shards)}): give every process the same --shard flags"
            ) from None

    def forget(self, ns_id: int) -> None:
        """Drop any cached placement of ``ns_id`` (this process's and the shared cache's):
        called after a placement changed and before that change is acknowledged."""
        if self._cache is not None:
            self._cache.invalidate([placement_key(ns_id)])

    def place_new(self) -> str:
        """The shard for a new namespace: the configured ``--place-new`` shard, else the one
        with the fewest namespaces (ties: the first by name). One grouped count on the
        directory; a single database answers ``main`` without reading."""
        if self.single:
            return MAIN
        if self._place_new is not None:
            return self._place_new
        counts: dict[str, int] = dict(
            self.directory.read(
                lambda c: c.execute(
                    select(placements.c.shard, func.count()).group_by(placements.c.shard)
                ).all()
            )
        )
        return min(sorted(self.shards), key=lambda name: int(counts.get(name, 0)))

    def place_shared(self, near: int) -> str:
        """The shard for a shared folder made from a folder of namespace ``near``: the
        configured ``--place-new`` shard, else ``near``'s own (the share is then one copy on
        one database; across shards it is the steps of `cubby.metadata.share_steps`)."""
        if self.single:
            return MAIN
        return self._place_new or self.placement(near).shard

    def place(self, ns_id: int, shard: str) -> None:
        """Record that ``ns_id`` lives on ``shard`` (a new namespace; in the directory's
        transaction if the caller is inside one on this thread)."""
        self.directory.write(
            lambda c: c.execute(insert(placements).values(ns_id=int(ns_id), shard=shard, state="live", epoch=1))
        )
        self.forget(ns_id)

    def shard_number(self, name: str) -> int:
        """The number of shard ``name`` (the top bits of its namespace ids), registered in the
        directory's ``shards`` table on first use: ``main`` is 0 (the ids that existed before
        sharding are its), every other shard the next free number. Never changes once written."""
        if name in self._numbers:
            return self._numbers[name]
        for _attempt in range(5):
            try:
                number = self.directory.write(lambda c: _register_shard(c, name))
                break
            except IntegrityError:  # another process registered a shard at the same moment
                continue
        else:
            raise CubbyError(f"could not register shard {name!r} in the directory")
        self._numbers[name] = number
        return number

    def close(self) -> None:
        for db in self.databases():
            db.dispose()


def _register_shard(conn: Connection, name: str) -> int:
    row = conn.execute(select(shards.c.number).where(shards.c.name == name)).first()
    if row is not None:
        return int(row[0])
    taken = {int(n) for (n,) in conn.execute(select(shards.c.number))}
    number = 0 if name == MAIN and 0 not in taken else max(taken | {0}) + 1
    if number >= MAX_SHARDS:
        raise CubbyError(f"too many shards: at most {MAX_SHARDS}")
    conn.execute(insert(shards).values(name=name, number=number, created_at=time.time()))
    return number


def allocate_ns_id(router: ShardRouter, shard: str) -> int:
    """A new namespace id on ``shard``, unique across every shard without a global sequence:
    ``number << LOCAL_BITS | n``, where ``n`` is the shard's own counter (a ``settings`` row
    on the shard, locked for the increment). Gaps are harmless (an allocation whose namespace
    was never written); an id is never given twice, also after namespaces moved away. On a
    single database, inside a write, the increment joins that transaction."""
    number = router.shard_number(shard)
    db = router.shard_db(shard)
    lo = number << LOCAL_BITS
    hi = lo + (1 << LOCAL_BITS)

    def run(conn: Connection) -> int:
        db.insert_ignore(conn, settings, [{"key": _COUNTER_KEY, "value": ""}])
        value = conn.execute(
            select(settings.c.value).where(settings.c.key == _COUNTER_KEY).with_for_update()
        ).scalar_one()
        if value:
            local = int(value)
        else:  # first use: above every id already on this shard in its range (ids before 0009)
            top = conn.execute(
                select(func.max(namespaces.c.ns_id)).where(namespaces.c.ns_id >= lo, namespaces.c.ns_id < hi)
            ).scalar()
            local = (int(top) - lo + 1) if top is not None else 1
        if local >= 1 << LOCAL_BITS:
            raise CubbyError(f"shard {shard!r} has used all its {1 << LOCAL_BITS} namespace ids")
        conn.execute(update(settings).where(settings.c.key == _COUNTER_KEY).values(value=str(local + 1)))
        return lo + local

    return db.write(run)


def write_membership(conn: Connection, user_id: int, ns_id: int, role: str, state: str) -> None:
    """Set the directory's copy of a ``members`` row (``conn``: a directory transaction).
    Written by whatever changes the shard's row, after it: the copy is what authentication
    reads, so it must never grant more than the shard's row (docs/SHARDING.md, intents)."""
    conn.execute(delete(memberships).where(memberships.c.user_id == user_id, memberships.c.ns_id == ns_id))
    conn.execute(insert(memberships).values(user_id=user_id, ns_id=ns_id, role=role, state=state))


def drop_memberships(conn: Connection, ns_id: int, user_id: int | None = None) -> None:
    """Delete the directory's copy of ``user_id``'s membership of ``ns_id`` (every member's,
    if ``user_id`` is None: an unshare)."""
    stmt = delete(memberships).where(memberships.c.ns_id == ns_id)
    if user_id is not None:
        stmt = stmt.where(memberships.c.user_id == user_id)
    conn.execute(stmt)


def active_memberships(conn: Connection, user_id: int) -> dict[int, str]:
    """``{ns_id: role}`` of ``user_id``'s active memberships, from the directory's copy."""
    return {
        int(r.ns_id): str(r.role)
        for r in conn.execute(
            select(memberships.c.ns_id, memberships.c.role).where(
                memberships.c.user_id == user_id, memberships.c.state == "active"
            )
        )
    }


__all__ = [
    "LOCAL_BITS",
    "MAIN",
    "MAX_SHARDS",
    "Placement",
    "PlacementCache",
    "ShardRouter",
    "UnknownShard",
    "active_memberships",
    "allocate_ns_id",
    "drop_memberships",
    "placement_key",
    "write_membership",
]

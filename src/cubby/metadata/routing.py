"""The namespace-keyed modules of each shard, and the calls that route to them.

`SqlMetadataStore` (metadata/store.py) keeps one `ShardModules` per shard database (one in
all on a single database) and runs every namespace-keyed call on the modules of the shard
that holds the namespace (`ShardRouter.db_for`). Calls that name namespaces on several shards
are split here into one call per shard (`heads`), or, for shares and moves between
namespaces, go to the shard of the namespace they name first: on one database, and between
namespaces of one shard, that is the whole operation; across shards they become intents
(docs/SHARDING.md, "Multi-namespace operations as intents").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from cubby.errors import BadRequest, CubbyError
from cubby.metadata.engine import Database
from cubby.metadata.moves import CrossMoves
from cubby.metadata.possession import Challenges
from cubby.metadata.reads import FileReads
from cubby.metadata.shardchunks import SplitHeld
from cubby.metadata.shards import ShardRouter
from cubby.metadata.shares import Sharing, SharingChange
from cubby.metadata.writes import FileWrites
from cubby.model import Entry


class ShardModules:
    """Reads, writes, shares and cross-namespace moves over one shard's database. On a single
    database the commit's chunk check is the one-statement, share-locked one; on a sharded
    deployment it is `SplitHeld` (touch on the chunk database first)."""

    def __init__(self, db: Database, router: ShardRouter, challenges: Challenges) -> None:
        self.db = db
        self.reads = FileReads(db)
        self.writes = FileWrites(db, challenges, self.reads, None if router.single else SplitHeld(router, db))
        self.sharing = Sharing(db, router)
        self.moves = CrossMoves(db, self.reads.stat)


class ShardSet:
    """`ShardModules` of every shard, and which one a namespace's call runs on."""

    def __init__(self, router: ShardRouter, challenges: Challenges) -> None:
        self.router = router
        by_db: dict[int, ShardModules] = {}
        self.by_name: dict[str, ShardModules] = {}
        for name, db in router.shards.items():
            self.by_name[name] = by_db.setdefault(id(db), ShardModules(db, router, challenges))
        self.distinct = list(by_db.values())
        self._only = self.distinct[0] if router.single else None

    def of(self, ns_id: int) -> ShardModules:
        """The modules of the shard holding ``ns_id`` (no lookup on a single database)."""
        if self._only is not None:
            return self._only
        name = self.router.placement(ns_id).shard
        mods = self.by_name.get(name)
        if mods is None:
            self.router.shard_db(name)  # raises UnknownShard, naming the shard
        assert mods is not None
        return mods

    def group(self, ns_ids: Iterable[int]) -> list[tuple[ShardModules, list[int]]]:
        """``ns_ids`` grouped by shard (namespaces without a placement are left out)."""
        if self._only is not None:
            return [(self._only, list(ns_ids))]
        out: dict[int, tuple[ShardModules, list[int]]] = {}
        for ns in ns_ids:
            try:
                mods = self.of(ns)
            except CubbyError:
                continue
            out.setdefault(id(mods), (mods, []))[1].append(ns)
        return list(out.values())


class RoutedSharing:
    """`cubby.metadata.shares.Sharing` on the shard of the namespace each call names (the
    owner's or member's root for share and accept, the shared folder for the rest).

    Between namespaces of one shard that is the whole operation; across shards (a member's
    root elsewhere) it is the intents of docs/SHARDING.md, not built here."""

    def __init__(self, shards: ShardSet) -> None:
        self.shards = shards

    def share(self, user_id: int, root_ns: int, path: str, invitee: Any, role: Any = "editor") -> SharingChange:
        return self.shards.of(root_ns).sharing.share(user_id, root_ns, path, invitee, role)

    def accept(self, user_id: int, root_ns: int, ns_id: int) -> SharingChange:
        return self.shards.of(ns_id).sharing.accept(user_id, root_ns, ns_id)

    def remove_member(self, user_id: int, ns_id: int, member: Any) -> SharingChange:
        return self.shards.of(ns_id).sharing.remove_member(user_id, ns_id, member)

    def leave(self, user_id: int, ns_id: int) -> SharingChange:
        return self.shards.of(ns_id).sharing.leave(user_id, ns_id)

    def unshare(self, user_id: int, ns_id: int) -> SharingChange:
        return self.shards.of(ns_id).sharing.unshare(user_id, ns_id)

    def roots_around(self, ns_id: int, users_: Iterable[int]) -> dict[int, int]:
        return self.shards.of(ns_id).sharing.roots_around(ns_id, users_)

    def list_shares(self, user_id: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for mods in self.shards.distinct:
            out += mods.sharing.list_shares(user_id)
        return out

    def cut(self, ns_id: int) -> int | None:
        return self.shards.of(ns_id).sharing.cut(ns_id)


class RoutedMoves:
    """`cubby.metadata.moves.CrossMoves` on the shard of both namespaces; a move between
    shards is refused with a clear error until its intents exist (docs/SHARDING.md)."""

    def __init__(self, shards: ShardSet) -> None:
        self.shards = shards

    def move(
        self, user_id: int, src_ns: int, src: str, dst_ns: int, dst: str, expected_rev: int | None = None
    ) -> Entry:
        here = self.shards.of(src_ns)
        if self.shards.of(dst_ns) is not here:
            raise BadRequest(
                "moving between folders kept on different metadata shards is not supported yet: copy and delete",
                code="cross_shard_move",
            )
        return here.moves.move(user_id, src_ns, src, dst_ns, dst, expected_rev)

    def recover(self, around: Callable[[list[int]], AbstractContextManager[object]] | None = None) -> int:
        """Recovery on every shard (each holds the intents of moves that start there)."""
        done = 0
        failed: list[CubbyError] = []
        for mods in self.shards.distinct:
            try:
                done += mods.moves.recover(around)
            except CubbyError as exc:
                failed.append(exc)
        if failed:
            raise failed[0]
        return done

    @property
    def fault(self) -> Any:
        return self.shards.distinct[0].moves.fault

    @fault.setter
    def fault(self, hook: Any) -> None:
        """Crash tests' hook (`cubby.metadata.moves.FaultHook`), set on every shard's moves."""
        for mods in self.shards.distinct:
            mods.moves.fault = hook


__all__ = ["RoutedMoves", "RoutedSharing", "ShardModules", "ShardSet"]

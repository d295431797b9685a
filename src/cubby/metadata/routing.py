"""The namespace-keyed modules of each shard, and the calls that route to them.

`SqlMetadataStore` (metadata/store.py) keeps one `ShardModules` per shard database (one in
all on a single database) and runs every namespace-keyed call on the modules of the shard
that holds the namespace (`ShardRouter.db_for`). Calls that name namespaces on several shards
are split here into one call per shard (`heads`). Shares and moves between namespaces are
not routed here: they are single-database steps tied by intents, each step on its own
namespace's shard (`cubby.metadata.sharded_shares`, `cubby.metadata.moves`; docs/SHARDING.md,
"Multi-namespace operations as intents").
"""

from __future__ import annotations

from collections.abc import Iterable

from cubby.errors import CubbyError
from cubby.metadata.engine import Database
from cubby.metadata.possession import Challenges
from cubby.metadata.reads import FileReads
from cubby.metadata.shardchunks import SplitHeld
from cubby.metadata.shards import ShardRouter
from cubby.metadata.writes import FileWrites


class ShardModules:
    """Reads and writes over one shard's database. On a single database the commit's chunk
    check is the one-statement, share-locked one; on a sharded deployment it is `SplitHeld`
    (touch on the chunk database first). (Shares and cross-namespace moves are not per shard:
    `Sharing` and `CrossMoves` run each of their steps on its own namespace's shard.)"""

    def __init__(self, db: Database, router: ShardRouter, challenges: Challenges) -> None:
        self.db = db
        self.reads = FileReads(db)
        self.writes = FileWrites(db, challenges, self.reads, None if router.single else SplitHeld(router, db))


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


__all__ = ["ShardModules", "ShardSet"]

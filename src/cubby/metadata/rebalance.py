"""Moving a namespace to another shard while it is in use (`cubby admin move-namespace`).

The steps, each one transaction on one database (the fault hook runs after each commits):

1. ``moving`` -- directory: the placement becomes ``moving``, with this process as owner and a
   lease (`cubby.metadata.leases`); the cached placement is invalidated. Reads and writes
   still go to the old shard.
2. ``copying`` / ``copied`` -- every row of the namespace is copied to the new shard in
   batches while writers go on (`cubby.metadata.nscopy.copy_all`), then what changed meanwhile
   (``copy_changes``, from the journal mark the bulk copy started at). ``copying`` is a hook
   in the middle of the bulk copy, a half copy on the new shard.
3. ``sealed`` -- old shard, one transaction holding the namespace's lock: copy the last
   changes (the new shard's transaction commits inside this one), compare row counts, and set
   ``namespaces.sealed``. From this commit on, a writer that locks the namespace there gets
   the retryable `NamespaceMoving` (`cubby.metadata.nstxn.lock_namespace`); the server retries
   it with a fresh placement for a few seconds before a client ever sees it
   (`cubby.metadata.rerouting`).
   This commit is the point of no return: a sealed old copy means a complete new one.
   (``sealing`` is a hook inside this transaction, after the new shard's commit.)
4. ``placed`` -- the new copy, written sealed (`cubby.metadata.nscopy`), is unsealed; then,
   directory: placement -> new shard, ``epoch + 1``, ``live``, no owner; the cached placement
   is invalidated. Writers waiting in their retry find the new shard.
5. ``deleted`` -- after `GRACE_SECONDS`, old shard: the namespace's rows are deleted, each
   table from its highest key down and the ``namespaces`` row last.

Writers pause from step 3's commit until step 4's (two short transactions); readers never:
they read the old copy (sealed or not, it is whole) until step 4, the new one after. A reader
routed by a placement cached before step 4 that reaches the old shard after step 5 finds no
namespace (`NamespaceGone`) and asks again with a fresh placement (`cubby.metadata.rerouting`).
Journal ids, node ids and revisions move unchanged, so clients' cursors stay valid.

Recovery (`NamespaceMover.recover`: at server start, whenever the command runs, and when a
writer has waited a second for a sealed namespace, `cubby.metadata.rerouting`) handles a move
whose owner is gone:

- the old copy is sealed: finish forward (steps 4 and 5; the new copy is the other shard that
  holds the namespace);
- otherwise undo: delete the copies on every other shard, then the placement is ``live``
  again on the old shard (in this order, so that a crash midway is undone again).

and deletes leftovers: a sealed copy on a shard that is not the namespace's (live) placement
(a move killed between steps 4 and 5). Either way the namespace ends whole on exactly one
shard, and the placement names it.

A mover that stalled past its lease (on another machine) may find its move undone: its next
step checks that it still owns the placement and stops with `Unavailable` if not. Step 3 checks
it inside the old shard's transaction, just before sealing.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from cubby.errors import BadRequest, Conflict, CubbyError, NotFound, Unavailable
from cubby.metadata import nscopy
from cubby.metadata.engine import Database
from cubby.metadata.leases import Owner
from cubby.metadata.schema import namespaces, placements
from cubby.metadata.shards import ShardRouter

STEPS = ("moving", "copying", "copied", "sealing", "sealed", "placed", "deleted")
"""Fault hook points, in order (see the module docstring)."""

OWNER_CHARS = int(getattr(placements.c.owner.type, "length", None) or 64)
"""The width of ``placements.owner``."""

RENEW_SECONDS = 20.0
"""How often a long bulk copy renews the move's lease (`cubby.metadata.leases.LEASE_SECONDS`)."""

CATCH_UP_PASSES = 5
"""Unlocked passes of changes after the bulk copy, at most; they stop early once a pass found
at most `CATCH_UP_ENOUGH` new journal entries (the locked pass copies the rest)."""
CATCH_UP_ENOUGH = 100

GRACE_SECONDS = 2.0
"""How long the old copy stays after the new placement (step 4) before it is deleted: a read
that was routed by the old placement just before is served whole from it meanwhile."""

FaultHook = Callable[[str], None]
"""Called with a step name after that step committed; tests use it to kill the process."""

Progress = Callable[[str, dict[str, Any]], None]
"""Called with a step name and facts about it (rows copied so far): the command prints them."""


@dataclass(frozen=True)
class MoveResult:
    """What `NamespaceMover.move` did."""

    ns_id: int
    source: str
    target: str
    epoch: int
    rows: int
    seconds: float
    paused_seconds: float
    """How long writers to the namespace waited: from the start of the sealing transaction
    (it holds the namespace's lock) to the new placement's commit."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class NamespaceMover:
    """Moves namespaces between the shards of ``router`` (see the module docstring)."""

    def __init__(
        self, router: ShardRouter, *, fault: FaultHook | None = None, progress: Progress | None = None,
        grace: float = GRACE_SECONDS,
    ) -> None:
        self.router = router
        self.grace = grace
        self.fault = fault
        self.progress = progress
        self.owner = Owner.this_process()
        me = str(self.owner)
        cut = self.owner.host[: OWNER_CHARS - len(me)]
        self.me = me if len(me) <= OWNER_CHARS else f"{cut}/{self.owner.pid}/{self.owner.start}"
        """This process as the placement's owner (a long host name is cut to fit the column: the
        owner then counts as another machine's, whose move only its lease ends)."""

    def _step(self, name: str, **facts: Any) -> None:
        if self.progress is not None:
            self.progress(name, facts)
        if self.fault is not None:
            self.fault(name)

    # -- the directory's placement row --------------------------------------------------------
    def _placement(self, ns_id: int) -> Any:
        """The placement row, read afresh from the directory (never from the cache)."""
        return self.router.directory.read(
            lambda c: c.execute(select(placements).where(placements.c.ns_id == ns_id)).first()
        )

    def _set_placement(self, ns_id: int, where: dict[str, Any], values: dict[str, Any]) -> bool:
        """Update the placement where its columns equal ``where``; whether it did. The cached
        placement is invalidated before this returns."""

        def run(conn: Connection) -> int:
            cond = [placements.c.ns_id == ns_id, *(placements.c[k] == v for k, v in where.items())]
            return int(conn.execute(update(placements).where(*cond).values(**values)).rowcount)

        done = self.router.directory.write(run) == 1
        self.router.forget(ns_id)
        return done

    def _renew(self, ns_id: int) -> None:
        """Extend this process's lease on the move; `Unavailable` if recovery took it over."""
        if not self._set_placement(
            ns_id, {"owner": self.me, "state": "moving"}, {"lease_until": self.owner.lease_until()}
        ):
            raise Unavailable("the move was interrupted and undone (its lease ran out); run the command again")

    # -- the move -------------------------------------------------------------------------------
    def move(self, ns_id: int, to: str) -> MoveResult:
        """Move namespace ``ns_id`` to shard ``to`` (see the module docstring). Errors, each
        with nothing changed: ``unknown_shard``, ``unknown_namespace``, ``already_there``,
        ``move_in_progress`` (another live process is moving it), ``same_database`` (two shard
        names for one database)."""
        started = time.monotonic()
        if to not in self.router.shards:
            raise BadRequest(
                f"there is no shard {to!r}; the shards are: {', '.join(sorted(self.router.shards))}", code="unknown_shard"
            )
        self.recover(ns_id)
        p = self._placement(ns_id)
        if p is None:
            raise NotFound(f"there is no namespace {ns_id}", code="unknown_namespace")
        if p.state != "live":
            raise Conflict(
                f"namespace {ns_id} is being moved by {p.owner}; wait for it (or for its lease to run out)",
                code="move_in_progress",
            )
        if p.shard == to:
            raise Conflict(f"namespace {ns_id} is already on shard {to}", code="already_there")
        source = str(p.shard)
        src, dst = self.router.shard_db(source), self.router.shard_db(to)
        if src is dst or src.url.render_as_string(hide_password=False) == dst.url.render_as_string(hide_password=False):
            # The copy would replace the rows it reads from, and step 5 delete them.
            raise BadRequest(f"shards {source} and {to} are the same database; nothing to move", code="same_database")

        # 1. the placement says "moving", with this process as its owner
        if not self._set_placement(
            ns_id, {"state": "live", "shard": source, "epoch": p.epoch},
            {"state": "moving", "owner": self.me, "lease_until": self.owner.lease_until()},
        ):
            raise Conflict(f"namespace {ns_id} changed while the move started; run the command again", code="move_in_progress")
        self._step("moving", source=source, target=to)

        try:
            # 2. the bulk copy, then what changed meanwhile
            half = False
            renewed = time.monotonic()

            def copied(table: str, rows: int) -> None:
                nonlocal half, renewed
                if self.progress is not None:
                    self.progress("copying", {"table": table, "rows": rows})
                if time.monotonic() - renewed > RENEW_SECONDS:  # a long copy keeps its lease
                    self._renew(ns_id)
                    renewed = time.monotonic()
                if table == "nodes" and not half:
                    half = True
                    if self.fault is not None:
                        self.fault("copying")

            mark = nscopy.copy_all(src, dst, ns_id, copied)
            self._renew(ns_id)
            # Catch up without the lock until little is left for the pass that holds it.
            for _ in range(CATCH_UP_PASSES):
                before = mark.head
                mark = src.read(functools.partial(_catch_up, dst=dst, ns_id=ns_id, since=mark))
                self._renew(ns_id)
                if mark.head - before <= CATCH_UP_ENOUGH:
                    break
            self._step("copied", head=mark.head)
            paused_at = time.monotonic()

            # 3. seal the old copy, with the last changes copied: the point of no return
            def seal(conn: Connection) -> None:
                row = conn.execute(
                    select(namespaces.c.sealed).where(namespaces.c.ns_id == ns_id).with_for_update()
                ).first()
                if row is None:
                    raise NotFound(f"there is no namespace {ns_id}", code="unknown_namespace")
                owned = self._placement(ns_id)
                if owned is None or owned.owner != self.me or owned.state != "moving":
                    raise Unavailable("the move was interrupted and undone (its lease ran out); run the command again")
                nscopy.copy_changes(conn, dst, ns_id, mark, verify=True)
                if self.fault is not None:
                    self.fault("sealing")  # the new copy committed, the seal not yet
                conn.execute(update(namespaces).where(namespaces.c.ns_id == ns_id).values(sealed=True))

            src.write(seal)
        except BaseException:
            self._undo_own(ns_id)
            raise
        self._step("sealed")

        # 4. the new copy takes writes, and the placement names it; writers waiting in their
        # retry go there
        nscopy.set_sealed(dst, ns_id, False)
        self._set_placement(
            ns_id, {"owner": self.me, "state": "moving"},
            {"shard": to, "epoch": int(p.epoch) + 1, "state": "live", "owner": None, "lease_until": None},
        )
        paused = time.monotonic() - paused_at
        self._step("placed", epoch=int(p.epoch) + 1, paused_ms=round(paused * 1000, 1))

        # 5. the old copy goes, once reads routed by the old placement have had time to end
        time.sleep(self.grace)
        rows = nscopy.delete_all(src, ns_id)
        self._step("deleted", rows=rows)
        return MoveResult(ns_id, source, to, int(p.epoch) + 1, rows, time.monotonic() - started, paused)

    def _undo_own(self, ns_id: int) -> None:
        """Undo this process's move after a failure before the seal (best effort: what is left
        is recovery's, once this process is gone or its lease ran out)."""
        try:
            p = self._placement(ns_id)
            if p is not None and p.owner == self.me and p.state == "moving":
                self._finish_or_undo(p)
        except CubbyError:
            pass

    # -- recovery -------------------------------------------------------------------------------
    def recover(self, ns_id: int | None = None) -> int:
        """Finish or undo every move (of ``ns_id`` only, if given) whose owner is gone, then
        delete sealed leftovers (module docstring). Safe to run at any time, from any process,
        more than once. Answers how many moves and leftovers it handled."""
        if self.router.single:
            return 0
        now = time.time()
        q = select(placements).where(placements.c.state == "moving")
        if ns_id is not None:
            q = q.where(placements.c.ns_id == ns_id)
        rows = self.router.directory.read(lambda c: c.execute(q).all())
        handled = 0
        for p in rows:
            if self.owner.is_gone(p.owner, p.lease_until, now):
                self._finish_or_undo(p)
                handled += 1
        return handled + self._sweep(ns_id)

    def _holders(self, ns_id: int, besides: str) -> list[tuple[str, Database]]:
        return [(name, db) for name, db in sorted(self.router.shards.items()) if name != besides and nscopy.holds(db, ns_id)]

    def _finish_or_undo(self, p: Any) -> None:
        ns_id, source = int(p.ns_id), str(p.shard)
        src = self.router.shard_db(source)
        sealed = src.read(
            lambda c: c.execute(select(namespaces.c.sealed).where(namespaces.c.ns_id == ns_id)).scalar()
        )
        others = self._holders(ns_id, source)
        owner = {"owner": p.owner, "state": "moving"}
        if sealed and others:
            target, target_db = others[0]  # a sealed old copy means one complete new copy (step 3)
            nscopy.set_sealed(target_db, ns_id, False)
            self._set_placement(
                ns_id, owner, {"shard": target, "epoch": int(p.epoch) + 1, "state": "live", "owner": None, "lease_until": None}
            )
            nscopy.delete_all(src, ns_id)
            return
        for _name, db in others:
            nscopy.delete_all(db, ns_id)
        if sealed:  # defensive: sealed with no copy elsewhere cannot come from these steps
            src.write(lambda c: c.execute(update(namespaces).where(namespaces.c.ns_id == ns_id).values(sealed=False)))
        self._set_placement(ns_id, owner, {"state": "live", "owner": None, "lease_until": None})

    def _sweep(self, ns_id: int | None) -> int:
        """Delete sealed copies on shards that a live placement does not name (a move killed
        between steps 4 and 5, or a finished one whose step 5 failed)."""
        swept = 0
        for name, db in sorted(self.router.shards.items()):
            q = select(namespaces.c.ns_id).where(namespaces.c.sealed.is_(True))
            if ns_id is not None:
                q = q.where(namespaces.c.ns_id == ns_id)
            for (sealed_ns,) in _all(db, q):
                p = self._placement(int(sealed_ns))
                if p is not None and p.state == "live" and p.shard != name:
                    nscopy.delete_all(db, int(sealed_ns))
                    swept += 1
        return swept


def _catch_up(conn: Connection, *, dst: Database, ns_id: int, since: nscopy.Mark) -> nscopy.Mark:
    return nscopy.copy_changes(conn, dst, ns_id, since)


def _all(db: Database, q: Any) -> list[Any]:
    return db.read(lambda c: list(c.execute(q).all()))


__all__ = ["GRACE_SECONDS", "STEPS", "FaultHook", "MoveResult", "NamespaceMover", "Progress"]

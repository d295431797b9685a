"""The sync engine: one thread of control that reads the three trees, plans, and applies.

A pass (`SyncEngine.run_once`) repeats: catch up with the journals of every namespace the
account can see (`replay`), scan the disk, plan (`planner.plan`), apply the plan (`apply`,
which hands transfers to `uploads` and `downloads`). It ends when a plan is empty (both sides
agree) or when a round made no progress (what is left failed and is reported).

`SyncEngine` is the shared `EngineCore` (folder, API client, state, cache, pool) plus those
parts, each given the core in its constructor; this module keeps only what a pass is made
of. How the engine is woken is `daemon.py`'s business: `SyncDaemon.run` takes a `ChangeWaiter`
(`cubby.client.changes.open_waiter`) for remote changes and a watcher for local ones, plus a
periodic full scan as a safety net.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from cubby.client.heap import gc_frozen, gc_paused
from cubby.client.sync import planner as P
from cubby.client.sync.base import EngineCore, PassReport, SyncLocked
from cubby.client.sync.ignore import IgnoreRules
from cubby.client.sync.replay import RemoteReplay
from cubby.client.sync.scanner import ScanResult, TreeListing, list_tree
from cubby.core import paths

if TYPE_CHECKING:
    import threading

    from cubby.client.sync.apply import Applier
    from cubby.client.sync.downloads import Downloads
    from cubby.client.sync.uploads import Uploads

__all__ = ["PassReport", "SyncEngine", "SyncLocked"]


@dataclass(frozen=True)
class _Settled:
    """The inputs of the last plan that left nothing to do (or only `Blocked` changes)."""

    generation: tuple[int, int]
    """`StateDb.generation` once that plan was made: base, remote tree, file index, mounts."""
    rules: IgnoreRules
    local: list[P.LocalItem]
    ops: list[P.Op]


def _context_hash(epoch: int, rules: IgnoreRules, ctx: P.Context) -> Any:
    h = hashlib.sha256()
    h.update(repr((epoch, rules.patterns, sorted(ctx.mounts.items()), tuple(ctx.evicted), ctx.host, ctx.day)).encode())
    return h


def plan_fingerprint(epoch: int, rules: IgnoreRules, ctx: P.Context, items: list[P.LocalItem]) -> str:
    """SHA-256 of everything a plan is made of that is not in the state database, with the
    database's epoch (`StateDb.epoch`) standing for the rest: equal fingerprints, equal plans."""
    h = _context_hash(epoch, rules, ctx)
    for i in items:
        h.update(f"\0{i.path}\t{i.rel}\t{i.kind}\t{i.hash}\t{i.inode}\t{i.size}".encode())
    return h.hexdigest()


def listing_fingerprint(epoch: int, rules: IgnoreRules, ctx: P.Context, listing_digest: str) -> str:
    """`plan_fingerprint` with the tree's listing (`ScanResult.listing_digest`) standing for the
    scanned items: a scan that hashed nothing makes its items of the listing, the rules and
    the file index alone, so an equal listing under an equal epoch scans to equal items."""
    h = _context_hash(epoch, rules, ctx)
    h.update(f"\0listing\t{listing_digest}".encode())
    return h.hexdigest()


class SyncEngine(EngineCore):
    """One folder kept in sync with one account (see the module docstring). The parts hold no
    state of their own (it is all in the core), so each is made on first use; `SyncDaemon`
    runs passes continuously. The parts that change things (transfers, applying a plan) are
    imported on first use too: a pass with nothing to do, in a new process (`cubby sync
    --once`), never loads them."""

    @cached_property
    def replay(self) -> RemoteReplay:
        return RemoteReplay(self)

    @cached_property
    def uploads(self) -> Uploads:
        from cubby.client.sync.uploads import Uploads

        return Uploads(self)

    @cached_property
    def downloads(self) -> Downloads:
        from cubby.client.sync.downloads import Downloads

        return Downloads(self)

    @cached_property
    def applier(self) -> Applier:
        from cubby.client.sync.apply import Applier

        return Applier(self, self.uploads, self.downloads)

    def refresh_remote(self) -> None:
        """Read every journal to its head (`RemoteReplay.refresh_remote`)."""
        self.replay.refresh_remote()

    def pending(self, *, refresh: bool = False) -> tuple[list[P.Op], ScanResult]:
        """The plan as of now, without applying it (what `cubby status` shows)."""
        if refresh:
            self.replay.refresh_remote()
        res = self.scan(persist=False)
        return P.plan(*self._trees(None, res), res.items, self.context()), res

    _settled: _Settled | None = None

    def _plan(self, res: ScanResult, ctx: P.Context) -> tuple[list[P.Op], IgnoreRules]:
        """The plan for this scan (and the ignore rules it was made with).

        `planner.plan` is a pure function of the base and remote trees, the scan and the
        context, and all but the scan come from the state database: when the database has not
        changed since a plan that left nothing to do, and the scan and the ignore rules are
        equal to what that plan saw, that plan is the answer again. So a pass with nothing
        changed reads neither tree (tens of thousands of rows) and plans nothing; any write
        to the state, any file that was hashed again, any item added, gone or moved on disk
        makes a real plan.

        A new process (`cubby sync --once`) has no such plan in memory; it finds the settled
        plan's fingerprint in the state database instead (`_settle`): the state's epoch, which
        every write moves, the ignore rules, the context and every scanned item. When the
        fingerprint of this pass is the same, the plan was empty then and is empty now, and the
        pass costs one stat per item and the journal request, hashing and planning nothing."""
        rules = IgnoreRules.load(self.root)
        s = self._settled
        if s is not None and s.rules == rules and s.generation == self.state.generation() and s.local == res.items:
            return list(s.ops), rules
        if s is None and self.state.settled() == self._fingerprint(rules, ctx, res):
            return [], rules
        return P.plan(*self._trees(rules, res), res.items, ctx), rules

    def _settle(self, rules: IgnoreRules, res: ScanResult, ops: list[P.Op], ctx: P.Context) -> None:
        """Remember a plan that left nothing to do, for `_plan`: in memory, and, when it is
        empty (not only `Blocked` changes, which are not written down), as a fingerprint in the
        state database for the next process, with the fingerprint of the listing the scan was
        made of when that stands for the scan (`_listed_unchanged`). Unchanged, they are not
        written again."""
        s = self._settled
        # Nothing is written down while something could not be read, or was read mid-change:
        # the next process scans again, and reports it again, rather than trust a plan made
        # around it.
        unread = bool(res.unreadable or res.changing)
        listed = not ops and not unread and res.hashed == 0 and res.listing_digest is not None and self._plain(ctx)
        if (
            s is None or s.generation != self.state.generation() or s.rules != rules or s.local != res.items or s.ops != ops
            or (listed and res.listing_digest != self._listing_written)  # (a pass that hashed a file left none)
        ):
            fingerprint = self._fingerprint(rules, ctx, res) if not ops and not unread else None
            listing = None
            if listed and res.listing_digest is not None:
                listing = listing_fingerprint(self.state.epoch(), rules, ctx, res.listing_digest)
            if self.state.settled() != fingerprint or self.state.settled_listing() != listing:
                self.state.set_settled(fingerprint, listing)
            self._listing_written = res.listing_digest if listing is not None else None
        self._settled = _Settled(self.state.generation(), rules, res.items, list(ops))

    _listing_written: str | None = None
    """The listing digest of the settled listing last written (`_settle`)."""

    @staticmethod
    def _plain(ctx: P.Context) -> bool:
        """One namespace, at the root, and no evicted mount: no step of a pass but the scan
        and the plan looks at the scanned items (`follow_mount_moves`, `_clear_evicted`)."""
        return not ctx.evicted and list(ctx.mounts) == [paths.ROOT]

    _listed: TreeListing | None = None
    """The tree as `_listed_unchanged` listed it, for the scan that follows."""

    def _listed_unchanged(self) -> bool:
        """A new process's first look at the folder: is it as the last settled plan saw it?

        A pass with nothing to do in a new process (`cubby sync --once`) would scan every
        item and fingerprint them (`_plan`). When the settled plan's scan hashed nothing, its
        items were made of the tree's listing (every name, with its mode, inode, size and
        mtime), the ignore rules and the file index alone; so when the state's epoch, the
        rules, the context and the listing (`scanner.list_tree`, on this thread) are all
        unchanged since, so are the items and the plan, which was empty. Any change on disk
        (an edit, a chmod, an addition, removal or rename) changes the listing, and any write
        to the state (a journal entry replayed) the epoch: then the scan that follows takes
        this listing instead of listing the tree again (`EngineCore.scan`)."""
        if self.started > 1 or self._settled is not None or self.last_scan.items:
            return False  # (a running client's later passes scan, keeping folders to reuse: `scan`)
        stored = self.state.settled_listing()
        if stored is None:
            return False
        ctx = self.context()
        if not self._plain(ctx):
            return False
        listed = list_tree(self.root, IgnoreRules.load(self.root))
        if listing_fingerprint(self.state.epoch(), listed.rules, ctx, listed.digest) == stored:
            return True
        self._listed = listed
        return False

    _last_fingerprint: tuple[int, IgnoreRules, P.Context, list[P.LocalItem], str] | None = None

    def _fingerprint(self, rules: IgnoreRules, ctx: P.Context, res: ScanResult) -> str:
        """`plan_fingerprint` of this state, kept for the same scan: `_plan` and `_settle` of
        one pass ask for it twice."""
        epoch = self.state.epoch()
        last = self._last_fingerprint
        if last is not None and last[0] == epoch and last[1] is rules and last[2] is ctx and last[3] is res.items:
            return last[4]
        fingerprint = plan_fingerprint(epoch, rules, ctx, res.items)
        self._last_fingerprint = (epoch, rules, ctx, res.items, fingerprint)
        return fingerprint

    def _trees(
        self, rules: IgnoreRules | None = None, scanned: ScanResult | None = None
    ) -> tuple[list[P.BaseItem], list[P.RemoteItem]]:
        """Base and remote trees without what the ignore rules hide locally: a file named
        ``x.tmp`` on the server is neither downloaded nor, being absent here, deleted there.

        An item at the path of an item of ``scanned`` (made under the same rules), of the same
        kind, is not tested: the scan tested that very path (its relative path on disk is its
        path in the tree) and its folders, and found it shown. (In a synced tree that is
        every item: testing each was a third of the trees' cost.)"""
        rules = rules if rules is not None else IgnoreRules.load(self.root)
        folders: dict[str, bool] = {"": True}
        files: dict[str, bool] = {}
        if scanned is not None and scanned.rules == rules:
            for i in scanned.items:
                rel = i.path[1:]
                if rel == i.rel:
                    (folders if i.kind == "folder" else files)[rel] = True

        def shown(rel: str) -> bool:
            """Is the folder at ``rel`` and every folder above it not ignored? (memoised: a
            tree's paths share their folders)"""
            got = folders.get(rel)
            if got is None:
                parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
                got = folders[rel] = shown(parent) and not rules.ignored(rel, is_dir=True)
            return got

        def visible(path: str, kind: str) -> bool:
            """(memoised too: the base and the remote tree hold mostly the same paths)"""
            rel = path.strip("/")
            if kind == "folder" and rel:
                return shown(rel)  # the same test, for a folder
            got = files.get(rel) if kind == "file" else None
            if got is None:
                parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
                got = shown(parent) and not rules.ignored(rel, is_dir=kind == "folder")
                if kind == "file":
                    files[rel] = got
            return got

        base = [b for b in self.state.base_items() if visible(b.path, b.kind)]
        remote = [r for r in self.state.remote_items() if visible(r.path, r.kind)]
        if scanned is not None and scanned.blind:
            base, remote = _outside(base, scanned.blind), _outside(remote, scanned.blind)
        return base, remote

    def run_once(self, *, local_first: bool = False, stop: threading.Event | None = None) -> PassReport:
        """One full pass: plan and apply until both sides agree, until three rounds in a row
        make no progress (what failed is in the report), or until ``stop`` is set (checked
        between rounds: a round in hand is finished, so `cubby sync` ends soon after SIGTERM).

        With ``local_first`` (the periodic safety-net scan) the disk is compared with the trees
        as they are, and the server is contacted only if that finds something to do: remote
        changes are learnt through the change waiter, never by polling on a timer."""
        report = PassReport()
        with self.pass_done:
            self.started += 1
            my_id = self.started
        idle_rounds = 0
        try:
            if local_first:
                with gc_paused():
                    res = self.scan()
                    ctx = self.context()
                    ops, rules = self._plan(res, ctx)
                if not ops or P.blocked_only(ops):
                    self._settle(rules, res, ops, ctx)
                    report.blocked = [o.path for o in ops if isinstance(o, P.Blocked)]
                    report.converged = _left_out(report, res)
                    return report
            for _ in range(self.max_rounds):
                if stop is not None and stop.is_set():
                    break
                report.rounds += 1
                self.replay.refresh_remote()
                self.crash_point("refreshed")
                if report.rounds == 1 and self._listed_unchanged():
                    report.converged = True
                    break
                with gc_paused():
                    listed, self._listed = self._listed, None
                    res = self.scan(keep=True, listed=listed)  # a new small file is read once: here
                if any(ns.mount != paths.ROOT for ns in self.state.namespaces().values()):
                    self.applier.follow_mount_moves(res.items)  # (only a shared folder's mount moves)
                ctx = self.context()
                with gc_paused():
                    ops, rules = self._plan(res, ctx)
                self.crash_point("planned")
                self._clear_evicted(ctx, res)
                converged = _left_out(report, res)
                if not ops or P.blocked_only(ops):
                    self._settle(rules, res, ops, ctx)
                    report.blocked = [o.path for o in ops if isinstance(o, P.Blocked)]
                    report.failed = []
                    report.converged = converged  # both sides agree, but for what is unknown here
                    break
                failures: list[dict[str, str]] = []
                with gc_frozen():
                    progress = self.applier.apply(ops, report, failures)
                report.failed = failures
                idle_rounds = 0 if progress else idle_rounds + 1
                if idle_rounds >= 3:
                    break
        finally:
            self.end_presend()
            self.last_scan.kept.clear()  # what the uploads did not take is not held between passes
            with self.pass_done:
                self.finished = max(self.finished, my_id)
                self.pass_done.notify_all()
        return report

    def _clear_evicted(self, ctx: P.Context, res: ScanResult) -> None:
        for m in ctx.evicted:
            if not any(paths.is_within(b.path, m) for b in self.state.base_items()) and not any(
                paths.is_within(i.path, m) for i in res.items
            ):
                self.state.clear_evicted(m)


Item = TypeVar("Item", P.BaseItem, P.RemoteItem)


def _left_out(report: PassReport, res: ScanResult) -> bool:
    """Put in ``report`` what the scan ``res`` could not take in (files and folders it could not
    read, files that changed while it read them); whether there was none. A pass whose plan is
    empty has synced everything else, but not those, so it has not converged until they are."""
    report.unreadable = [u.to_dict() for u in res.unreadable]
    report.changing = list(res.changing)
    return not res.unreadable and not res.changing


def _outside(items: list[Item], blind: list[str]) -> list[Item]:
    """``items`` but those strictly below a folder of ``blind`` (display paths of folders the
    scan could not list): with the local side unknown there, the planner must see neither the
    base nor the server there, or it would take the unknown for deleted (`cubby.client.sync.scanner`)."""
    keys = [paths.key(b) for b in blind]
    return [it for it in items if not any(_strictly_within(paths.key(it.path), k) for k in keys)]


def _strictly_within(key: str, folder: str) -> bool:
    return key != folder and (folder == paths.ROOT or key.startswith(folder + "/"))

"""The sync engine: one thread of control that reads the three trees, plans, and applies.

A pass (`SyncEngine.run_once`) repeats: catch up with the journals of every namespace the
account can see, scan the disk, plan (`planner.plan`), apply the plan. It ends when a plan is
empty (both sides agree) or when a round made no progress (what is left failed and is reported).

Crash safety comes from the order of every step: the side effect happens first (a rename on
disk, a commit on the server), then its record in the base. A crash in between leaves a base
that is behind both sides, which the next plan sees as "both changed to the same thing" and
adopts without transferring anything. Local writes land in a temp file under ``.cubby/tmp``
and are renamed into place only when whole and durable, after checking that the file they
replace is still the one the plan saw; a local delete checks the same, so an edit made while
sync runs is never overwritten or deleted.

Hashing and disk reads run on a small worker pool; HTTP requests go through one `ApiClient`
(with its rate limits). How the engine is woken is not its business: `run_forever` takes a
`ChangeWaiter` (`cubby.client.changes.open_waiter`) for remote changes and a watcher for local
ones, plus a periodic full scan as a safety net.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import random
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from cubby.client import modes, transfer
from cubby.client.api import ApiClient, commit_body
from cubby.client.changes import ChangeWaiter
from cubby.client.sync import planner as P
from cubby.client.sync.cache import ChunkCache
from cubby.client.sync.ignore import STATE_DIR, IgnoreRules
from cubby.client.sync.scanner import ScanResult, scan
from cubby.client.sync.state import FileRecord, StateDb
from cubby.client.sync.trust import Refusal, UnsafePath, local_target, mount_path, shown
from cubby.client.windows import BATCH, DOWNLOAD_WINDOW
from cubby.core import delta, paths
from cubby.core.hashing import sha256_hex
from cubby.errors import BadRequest, Conflict, CubbyError, NotFound, Unavailable
from cubby.model import ChunkRef, CommitResult, Entry, JournalEntry

Emit = Callable[[dict[str, Any]], None]



class SyncLocked(CubbyError):
    code = "sync_locked"
    status = 409


@dataclass
class PassReport:
    """What a pass did: operations applied per kind, failures, and whether both sides agree."""

    applied: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    converged: bool = False
    rounds: int = 0

    def count(self, name: str, n: int = 1) -> None:
        self.applied[name] = self.applied.get(name, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "failed": self.failed, "blocked": self.blocked, "converged": self.converged, "rounds": self.rounds}


class Backoff:
    """Exponential backoff with jitter, so that many clients do not retry in step."""

    def __init__(self, first: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.first, self.cap, self.n = first, cap, 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.cap, self.first * (2 ** self.n)) * self.rng.uniform(0.5, 1.0)
        self.n = min(self.n + 1, 30)
        return delay

    def reset(self) -> None:
        self.n = 0


class SyncEngine:
    def __init__(
        self,
        root: Path,
        api: ApiClient,
        *,
        state: StateDb | None = None,
        cache_bytes: int = 256 * 1024 * 1024,
        host: str | None = None,
        emit: Emit | None = None,
        workers: int = 2,
        crash_hook: Callable[[str], None] | None = None,
        max_rounds: int = 50,
    ) -> None:
        self.root = Path(root).resolve()
        self.api = api
        self.dir = self.root / STATE_DIR
        (self.dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.state = state or StateDb(self.dir / "state.db")
        self.cache = ChunkCache(self.dir / "cache", cache_bytes)
        self.host = host or socket.gethostname().split(".")[0]
        self.emit = emit or (lambda obj: None)
        self.pool = ThreadPoolExecutor(max(1, workers), thread_name_prefix="cubby-sync")
        self.crash_hook = crash_hook
        self.max_rounds = max_rounds
        self._lock_fd: int | None = None
        self._cursor_lock = threading.Lock()
        self._cursors: dict[int, int] = self.state.cursors()
        self._last_scan: ScanResult = ScanResult()
        self.trigger = threading.Event()
        """Set to make a running `run_forever` look now (and to wake it when it should stop)."""
        self.pass_done = threading.Condition()
        self.started = 0
        self.finished = 0

    # -- life cycle ------------------------------------------------------------------------------
    def lock(self) -> None:
        """One engine per folder: a second `cubby sync` on the same folder is refused."""
        import fcntl

        fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SyncLocked(f"another cubby sync is already running on {self.root}") from None
        self._lock_fd = fd
        now = time.time()
        for leftover in (self.dir / "tmp").iterdir():
            # a killed run's temp files; large downloads (named by content) are resumed, for a day
            if len(leftover.stem) != 64 or now - leftover.stat().st_mtime > 24 * 3600:
                leftover.unlink(missing_ok=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.state.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def link(self, url: str) -> None:
        """Tie the folder to one account on one server, on first use; refuse another later.
        A folder already linked may start while the server is away (it syncs on reconnect)."""
        linked = self.state.get_meta("linked")
        try:
            acct = self.api.account()
        except Unavailable:
            if linked is not None and linked.startswith(url.rstrip("/") + "#"):
                return
            raise
        who = f"{url.rstrip('/')}#{acct['user_id']}"
        if linked is None:
            self.state.set_meta("linked", who)
        elif linked != who:
            raise BadRequest(f"{self.root} is synced with {linked}, not {who}; use another folder", code="linked_elsewhere")

    def cursors(self) -> dict[int, int]:
        with self._cursor_lock:
            return dict(self._cursors)

    def _crash_point(self, where: str) -> None:
        if self.crash_hook is not None:
            self.crash_hook(where)

    # -- remote tree -----------------------------------------------------------------------------
    def refresh_remote(self) -> None:
        """Learn the namespaces (from the account) and read every journal to its head; read
        the account again afterwards and start over if the set of namespaces changed
        meanwhile, so that a folder being shared is never seen half moved (gone from one
        namespace, not yet in the other)."""
        acct = self.api.account()
        if self._caught_up(acct):
            return  # the account's heads are our cursors: a pass with nothing new costs one request
        for _ in range(3):
            self._refresh_from(acct)
            again = self.api.account()
            if {(n["ns_id"], n["path"]) for n in again.get("namespaces", [])} == {
                (n["ns_id"], n["path"]) for n in acct.get("namespaces", [])
            }:
                return
            acct = again

    def _caught_up(self, acct: dict[str, Any]) -> bool:
        """Does the account show the namespaces we know, each at the head we have read to?"""
        known = self.state.namespaces()
        seen = acct.get("namespaces", [])
        if len(seen) != len(known):
            return False
        for n in seen:
            ns = known.get(int(n["ns_id"]))
            if ns is None or ns.cursor != int(n["head"]) or (ns.mount, ns.role) != (paths.normalize(n["path"]), str(n.get("role", "owner"))):
                return False
        return True

    def _refresh_from(self, acct: dict[str, Any]) -> None:
        seen = {int(n["ns_id"]): n for n in acct.get("namespaces", [])}
        known = self.state.namespaces()
        for ns_id in set(known) - set(seen):
            self.state.drop_namespace(ns_id)
            self.emit({"event": "namespace_removed", "ns_id": ns_id, "path": known[ns_id].mount})
        for ns_id, n in seen.items():
            try:
                mount, role = mount_path(n.get("path")), str(n.get("role", "owner"))
            except UnsafePath as exc:
                self.state.record_refusal(Refusal(ns_id, "mount", shown(n.get("path")), exc.message))
                continue
            if ns_id not in known:
                head = int(n["head"])  # before the listing: the replay from here covers any race
                listing = list(self.api.list(mount, recursive=True))
                self.state.add_namespace(ns_id, mount, role, head, listing)
                self.emit({"event": "namespace_added", "ns_id": ns_id, "path": mount})
            elif (known[ns_id].mount, known[ns_id].role) != (mount, role):
                self.state.update_namespace(ns_id, mount, role)
        for ns_id, ns in self.state.namespaces().items():
            cursor = ns.cursor
            while True:
                page = self.api.journal(ns_id, cursor)
                # (cast: ApiClient has a method named `list`, which confuses mypy in its annotations)
                entries, more = cast("list[JournalEntry]", page[0]), page[2]
                last = max((e.jid for e in entries), default=cursor)
                self.state.apply_journal(ns_id, entries, last)
                cursor = last
                if not more or not entries:
                    break
        with self._cursor_lock:
            self._cursors = self.state.cursors()

    # -- a pass ------------------------------------------------------------------------------------
    def context(self) -> P.Context:
        nss = self.state.namespaces()
        mounts = {n.mount: (n.ns_id, n.writable) for n in nss.values()}
        mounts.setdefault(paths.ROOT, (0, True))
        return P.Context(mounts=mounts, evicted=tuple(self.state.evicted()), host=self.host, day=dt.date.today().isoformat())

    def scan(self, persist: bool = True) -> ScanResult:
        self._last_scan = scan(self.root, self.state, self.pool, persist=persist)
        return self._last_scan

    def pending(self, *, refresh: bool = False) -> tuple[list[P.Op], ScanResult]:
        """The plan as of now, without applying it (what `cubby status` shows)."""
        if refresh:
            self.refresh_remote()
        res = self.scan(persist=False)
        return P.plan(*self._trees(), res.items, self.context()), res

    def _trees(self) -> tuple[list[P.BaseItem], list[P.RemoteItem]]:
        """Base and remote trees without what the ignore rules hide locally: a file named
        ``x.tmp`` on the server is neither downloaded nor, being absent here, deleted there."""
        rules = IgnoreRules.load(self.root)
        folders: dict[str, bool] = {"": True}

        def shown(rel: str) -> bool:
            """Is the folder at ``rel`` and every folder above it not ignored? (memoised: a
            tree's paths share their folders)"""
            got = folders.get(rel)
            if got is None:
                parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
                got = folders[rel] = shown(parent) and not rules.ignored(rel, is_dir=True)
            return got

        def visible(path: str, kind: str) -> bool:
            rel = path.strip("/")
            parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
            return shown(parent) and not rules.ignored(rel, is_dir=kind == "folder")

        return (
            [b for b in self.state.base_items() if visible(b.path, b.kind)],
            [r for r in self.state.remote_items() if visible(r.path, r.kind)],
        )

    def _follow_mount_moves(self, local: Sequence[P.LocalItem]) -> None:
        """A shared folder's mount point renamed or moved on disk is a move of the mount on the
        server (it only changes where the folder appears in this user's tree), as in Dropbox:
        not a delete of the folder's contents and an upload of a copy. Recognised by the
        folder's inode; anything less certain is left to the planner, which restores the mount."""
        namespaces = self.state.namespaces().values()
        mounts = [ns.mount for ns in namespaces if ns.mount != paths.ROOT]
        if not mounts:
            return
        bases = self.state.mount_bases()
        for ns in namespaces:
            base = bases.get(ns.ns_id)
            if ns.mount == paths.ROOT or base is None or not base.inode or os.path.isdir(self._abs(self.rel_for(ns.mount))):
                continue
            moved = [item for item in local if item.kind == "folder" and item.inode == base.inode]
            if len(moved) != 1 or any(paths.is_within(moved[0].path, m) for m in mounts):
                continue
            try:
                self.api.move(ns.mount, moved[0].path)
            except CubbyError as exc:
                self.emit({"event": "mount_move_refused", "path": ns.mount, "to": moved[0].path, "error": exc.code})
                continue
            self.state.move_mount(ns.ns_id, moved[0].path)
            self.emit({"event": "mount_moved", "ns_id": ns.ns_id, "from": ns.mount, "to": moved[0].path})

    def run_once(self, *, local_first: bool = False) -> PassReport:
        """One full pass: plan and apply until both sides agree, or until three rounds in a
        row make no progress (what failed is in the report).

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
                res = self.scan()
                ops = P.plan(*self._trees(), res.items, self.context())
                if not ops or P.blocked_only(ops):
                    report.blocked = [o.path for o in ops if isinstance(o, P.Blocked)]
                    report.converged = True
                    return report
            for _ in range(self.max_rounds):
                report.rounds += 1
                self.refresh_remote()
                self._crash_point("refreshed")
                res = self.scan()
                self._follow_mount_moves(res.items)
                ctx = self.context()
                ops = P.plan(*self._trees(), res.items, ctx)
                self._crash_point("planned")
                self._clear_evicted(ctx, res)
                if not ops or P.blocked_only(ops):
                    report.blocked = [o.path for o in ops if isinstance(o, P.Blocked)]
                    report.failed = []
                    report.converged = True
                    break
                failures: list[dict[str, str]] = []
                progress = self.apply(ops, report, failures)
                report.failed = failures
                idle_rounds = 0 if progress else idle_rounds + 1
                if idle_rounds >= 3:
                    break
        finally:
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

    def apply(self, ops: Sequence[P.Op], report: PassReport, failures: list[dict[str, str]]) -> int:
        """Apply one plan; returns how many operations succeeded. Unavailable propagates (the
        caller backs off); any other error fails that operation only."""
        done = 0
        uploads = [o for o in ops if isinstance(o, P.Upload)]
        downloads = [o for o in ops if isinstance(o, P.Download)]
        rest = [o for o in ops if not isinstance(o, (P.Upload, P.Download))]
        first = [o for o in rest if not isinstance(o, (P.DeleteLocal, P.DeleteRemote))]
        deletes = [o for o in rest if isinstance(o, (P.DeleteLocal, P.DeleteRemote))]

        def one(op: P.Op) -> None:
            nonlocal done
            try:
                if self._apply_one(op):
                    done += 1
                    report.count(type(op).__name__)
                    self.emit({"op": type(op).__name__, "path": _path_of(op)})
                    self._crash_point(type(op).__name__)
            except Unavailable:
                raise
            except (CubbyError, OSError) as exc:
                failures.append({"op": type(op).__name__, "path": _path_of(op), "error": str(exc)})

        remote: list[P.Op] = []
        for op in first:
            if isinstance(op, (P.MkdirRemote, P.MoveRemote)):
                remote.append(op)  # sent together, in plan order, with the next local op
                continue
            done += self._apply_remote(remote, report, failures)
            remote = []
            one(op)
        done += self._apply_remote(remote, report, failures)
        if uploads:
            n = self._upload(uploads, failures)
            done += n
            if n:
                report.count("Upload", n)
        if downloads:
            n = self._download(downloads, failures)
            done += n
            if n:
                report.count("Download", n)
        remote = []
        for dop in deletes:
            if isinstance(dop, P.DeleteRemote):
                if dop.remote.kind == "folder" and not self._folder_unchanged(dop.remote):
                    continue  # something arrived in it meanwhile: the next round learns what
                remote.append(dop)
            else:
                one(dop)
        done += self._apply_remote(remote, report, failures)
        return done

    def _apply_remote(self, ops: Sequence[P.Op], report: PassReport, failures: list[dict[str, str]]) -> int:
        """Folder creations, moves and deletes on the server, a batch request per thousand
        (`ApiClient.batch`), applied there in this order; each answer is then recorded in the
        base as the single operation would record it. A conflict or a vanished source is not a
        failure: the server moved on and the next plan sees how."""
        if not ops:
            return 0
        cursors = self.state.cursors()
        bodies: list[dict[str, Any]] = []
        for op in ops:
            if isinstance(op, P.MkdirRemote):
                bodies.append({"op": "mkdir", "path": op.local.path})
            elif isinstance(op, P.MoveRemote):
                bodies.append({"op": "move", "from_path": op.path, "to_path": op.new_path, "expected_rev": op.expected_rev})
            elif isinstance(op, P.DeleteRemote):
                since = cursors.get(op.remote.ns_id) if op.remote.kind == "folder" else None
                bodies.append({"op": "delete", "path": op.remote.path, "expected_rev": op.remote.rev, "unchanged_since": since})
        outcomes = self.api.batch(bodies)
        self._crash_point("batched_remote")
        done = 0
        st = self.state
        with st.tx():
            for op, out in zip(ops, outcomes, strict=True):
                name = type(op).__name__
                if isinstance(out, CubbyError):
                    if isinstance(op, P.DeleteRemote) and isinstance(out, NotFound):
                        pass  # already gone: what we wanted
                    elif isinstance(out, (Conflict, NotFound)) and not isinstance(op, P.MkdirRemote):
                        continue
                    else:
                        failures.append({"op": name, "path": _path_of(op), "error": str(out)})
                        continue
                if isinstance(op, (P.MkdirRemote, P.MoveRemote)):
                    assert isinstance(out, Entry)
                    if not st.put_remote_entry(out):
                        # refused (recorded by the state), never acted on
                        failures.append({"op": name, "path": _path_of(op), "error": f"the server answered with {shown(out.path)!r}"})
                        continue
                if isinstance(op, P.MkdirRemote):
                    assert isinstance(out, Entry)
                    st.set_base(P.BaseItem(out.ns_id, out.node_id, out.path, "folder", out.rev, None, op.local.inode))
                elif isinstance(op, P.MoveRemote):
                    assert isinstance(out, Entry)
                    st.move_base(op.node, out.path)
                elif isinstance(op, P.DeleteRemote):
                    st.delete_remote(op.remote.node)
                    st.forget_base(op.remote.node)
                done += 1
                report.count(name)
                self.emit({"op": name, "path": _path_of(op)})
        return done

    # -- single operations -------------------------------------------------------------------------
    def _abs(self, rel: str) -> Path:
        """The one way from a relative path to the disk: `trust.local_target` refuses anything
        outside the synced folder or inside its state folder (`UnsafePath`)."""
        return local_target(self.root, rel)

    def rel_for(self, path: str) -> str:
        """Where a path of the user's tree goes on disk: existing folders keep their on-disk
        spelling (which may differ in case or normalisation), new names are NFC."""
        by_key = {paths.key(i.path): i.rel for i in self._last_scan.items if i.kind == "folder"}
        parts: list[str] = []
        for a in paths.ancestors(path):
            rel = by_key.get(paths.key(a))
            parts = rel.split("/") if rel else parts + [paths.split(a)[1]]
        parts.append(paths.split(path)[1])
        return "/".join(parts)

    def _apply_one(self, op: P.Op) -> bool:
        st = self.state
        if isinstance(op, P.Adopt):
            st.set_base(_base_of(op.remote, op.local.inode))
        elif isinstance(op, P.Forget):
            st.forget_base(op.node)
        elif isinstance(op, P.RecordMove):
            st.move_base(op.node, op.new_path, op.inode)
        elif isinstance(op, P.Blocked):
            return False
        elif isinstance(op, P.ConflictCopy):
            target = self.rel_for(op.new_path)
            if os.path.lexists(self._abs(target)):
                raise Conflict(f"{target} appeared meanwhile")
            self._abs(target).parent.mkdir(parents=True, exist_ok=True)
            os.rename(self._abs(op.rel), self._abs(target))
            st.rename_files(op.rel, target)
            self.emit({"event": "conflict", "path": op.new_path, "reason": op.reason})
        elif isinstance(op, P.MoveLocal):
            target = self.rel_for(op.new_path)
            if os.path.lexists(self._abs(target)) and paths.key(target) != paths.key(op.rel):
                raise Conflict(f"{target} appeared meanwhile")
            self._abs(target).parent.mkdir(parents=True, exist_ok=True)
            os.rename(self._abs(op.rel), self._abs(target))
            self._crash_point("moved_local")
            st.rename_files(op.rel, target)
            st.move_base(op.node, op.new_path)
        elif isinstance(op, P.MkdirLocal):
            folder = self._abs(self.rel_for(op.remote.path))
            folder.mkdir(parents=True, exist_ok=True)
            st.set_base(_base_of(op.remote, folder.stat().st_ino))
        elif isinstance(op, P.DeleteLocal):
            return self._delete_local(op)
        return True

    def _folder_unchanged(self, folder: P.RemoteItem) -> bool:
        """Does the server's subtree hold exactly what the remote tree says? A folder delete
        takes its whole subtree on the server, and ``expected_rev`` only covers the folder
        itself, so a file another client just added to it must be seen first, or it would
        go with the folder. A change landing between this listing and the delete is caught
        by the server: the delete carries ``unchanged_since`` (this namespace's cursor) and is
        refused if anything below the folder changed after it."""
        known = {(r.node_id, r.rev) for r in self.state.remote_items()
                 if r.ns_id == folder.ns_id and paths.is_within(r.path, folder.path) and r.path != folder.path}
        try:
            for e in self.api.list(folder.path, recursive=True):
                if (e.node_id, e.rev) not in known:
                    return False
        except NotFound:
            return True
        return True

    def _delete_local(self, op: P.DeleteLocal) -> bool:
        p = self._abs(op.local.rel)
        if op.local.kind == "file":
            rec = self.state.file(op.local.rel)
            try:
                s = os.lstat(p)
            except FileNotFoundError:
                self.state.forget_base(op.node)
                return True
            if rec is None or (rec.size, rec.mtime_ns, rec.inode, rec.mode) != (s.st_size, s.st_mtime_ns, s.st_ino, modes.mode_of(s)):
                return False  # edited since the scan: keep it, the next plan uploads it
            self._keep_chunks(rec)
            p.unlink()
            self.state.drop_files([op.local.rel])
        else:
            try:
                os.rmdir(p)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                rules = IgnoreRules.load(self.root)
                for dirpath, dnames, fnames in os.walk(p):
                    for name in fnames + dnames:
                        rel = os.path.relpath(os.path.join(dirpath, name), self.root).replace(os.sep, "/")
                        is_dir = os.path.isdir(os.path.join(dirpath, name))
                        if not rules.ignored(rel, is_dir) and not (is_dir and _only_ignored(Path(dirpath) / name, self.root, rules)):
                            return False  # something new arrived: keep the folder
                shutil.rmtree(p)
        self.state.forget_base(op.node)
        return True

    def _keep_chunks(self, rec: FileRecord) -> None:
        """Copy a file's chunks to the cache before it goes, if it is small enough to be worth it."""
        if rec.size == 0 or rec.size > self.cache.max_bytes // 4 or rec.mode == modes.SYMLINK:
            return
        try:
            with open(self._abs(rec.rel), "rb") as fh:
                for h, off, size in rec.chunks:
                    if h in self.cache:
                        continue
                    fh.seek(off)
                    data = fh.read(size)
                    if sha256_hex(data) == h:
                        self.cache.put(h, data)
        except OSError:
            pass

    # -- uploads -----------------------------------------------------------------------------------
    def _upload(self, ops: Sequence[P.Upload], failures: list[dict[str, str]]) -> int:
        """Commit many files in few requests: a thousand commits per batch, then one round of
        proofs and chunk uploads for everything the server asked for, then commit again."""
        ctx = self.context()
        groups: dict[int, list[tuple[P.Upload, transfer.LocalFile]]] = {}
        for op in ops:
            rec = self.state.file(op.local.rel)
            if rec is None or rec.version != op.local.hash:
                continue
            lf = transfer.LocalFile(
                self._abs(op.local.rel), op.local.path, rec.size, rec.mtime_ns / 1e9,
                [transfer.LocalChunk(off, size, h) for h, off, size in rec.chunks], rec.inode, mode=rec.mode,
            )
            if rec.mode == modes.SYMLINK:
                try:
                    lf.data = os.fsencode(os.readlink(lf.local))  # never read through the link
                except OSError:
                    continue
            ns_id = ctx.mounts[P.mount_of(op.local.path, ctx.mounts)][0]
            groups.setdefault(ns_id, []).append((op, lf))
        done = 0
        for ns_id, items in groups.items():
            for i in range(0, len(items), BATCH):
                done += self._upload_group(ns_id, items[i : i + BATCH], failures)
        return done

    def _still_same(self, op: P.Upload, lf: transfer.LocalFile) -> bool:
        try:
            s = os.lstat(lf.local)
        except OSError:
            return False
        rec = self.state.file(op.local.rel)
        return rec is not None and (rec.size, rec.mtime_ns, rec.inode, rec.mode) == (s.st_size, s.st_mtime_ns, s.st_ino, modes.mode_of(s))

    def _upload_group(self, ns_id: int, items: list[tuple[P.Upload, transfer.LocalFile]], failures: list[dict[str, str]]) -> int:
        done = 0
        pending = [(op, lf) for op, lf in items if self._still_same(op, lf)]
        for _attempt in range(3):
            if not pending:
                break
            bodies = [commit_body(lf.remote, lf.size, lf.refs, op.expected_rev, lf.mtime, lf.mode) for op, lf in pending]
            outcomes = self.api.commit_batch(bodies)
            needing: list[tuple[P.Upload, transfer.LocalFile, CommitResult]] = []
            with self.state.tx():
                for (op, lf), out in zip(pending, outcomes):
                    if isinstance(out, CubbyError):
                        if not isinstance(out, Conflict):
                            failures.append({"op": "Upload", "path": lf.remote, "error": f"{out.message} [{out.code}]"})
                        continue
                    if out.entry is not None:
                        self._committed(out.entry, lf)
                        done += 1
                        self.emit({"op": "Upload", "path": out.entry.path, "size": lf.size})
                    else:
                        needing.append((op, lf, out))
            self._crash_point("committed")
            if not needing:
                break
            try:
                transfer.supply(
                    self.api, ns_id, transfer._needs_for([(lf, out) for _, lf, out in needing]),
                    self._progress_up(sum(lf.size for _, lf, _ in needing)),
                )
            except transfer.FileChanged:
                self.state.drop_files(op.local.rel for op, _, _ in needing)  # read again next scan
                break
            self._crash_point("supplied")
            pending = [(op, lf) for op, lf, _ in needing]
        return done

    def _progress_up(self, total: int) -> Callable[[int], None]:
        sent = 0

        def progress(n: int) -> None:
            nonlocal sent
            sent += n
            if total > DOWNLOAD_WINDOW:  # only long transfers are worth a progress line
                self.emit({"event": "progress", "direction": "up", "done": sent, "total": total})

        return progress

    def _committed(self, e: Entry, lf: transfer.LocalFile) -> None:
        if self.state.put_remote_entry(e):
            self.state.set_base(P.BaseItem(e.ns_id, e.node_id, e.path, "file", e.rev, modes.version(e.content_hash, e.mode), lf.inode))

    # -- downloads ---------------------------------------------------------------------------------
    def _download(self, ops: Sequence[P.Download], failures: list[dict[str, str]]) -> int:
        """Fetch many files: their chunk lists a thousand at a time, then their chunks from the
        local disk, the cache, or the server (in bounded batches), into temp files that are
        renamed into place when whole."""
        done = 0
        for i in range(0, len(ops), BATCH):
            group = list(ops[i : i + BATCH])
            lists = cast("list[tuple[Entry, list[ChunkRef]] | CubbyError]", self.api.blocklists([o.remote.path for o in group]))
            ready: list[tuple[P.Download, list[ChunkRef], Entry]] = []
            for op, bl in zip(group, lists, strict=True):
                if isinstance(bl, CubbyError):
                    continue  # gone since the journal said so: the next round learns it
                entry, chunks = bl
                if modes.version(entry.content_hash, entry.mode) != op.remote.hash or entry.node_id != op.remote.node_id:
                    continue
                ready.append((op, chunks, entry))
            batch: list[tuple[P.Download, list[ChunkRef], Entry]] = []
            size = 0
            for item in ready:
                if item[2].size > DOWNLOAD_WINDOW:
                    done += self._download_files([item], failures)
                    continue
                batch.append(item)
                size += item[2].size
                if size >= DOWNLOAD_WINDOW:
                    done += self._download_files(batch, failures)
                    batch, size = [], 0
            if batch:
                done += self._download_files(batch, failures)
        return done

    def _local_chunk(self, h: str) -> bytes | None:
        for rel, off, size in self.state.chunk_locations(h):
            try:
                with open(self._abs(rel), "rb") as fh:
                    fh.seek(off)
                    data = fh.read(size)
            except OSError:
                continue
            if sha256_hex(data) == h:
                return data
        return self.cache.get(h)

    def _chunks_for(self, chunks: Sequence[ChunkRef], bases: dict[str, str] | None = None) -> Iterator[tuple[ChunkRef, bytes]]:
        """Each chunk's bytes in order, looking locally first and fetching the rest from the
        server a bounded window at a time; a chunk with a base (an old chunk at the same place
        in the version being replaced, still on disk) comes as a delta against it."""
        i = 0
        while i < len(chunks):
            window: list[ChunkRef] = []
            size = 0
            while i < len(chunks) and (not window or size + chunks[i].size <= DOWNLOAD_WINDOW):
                window.append(chunks[i])
                size += chunks[i].size
                i += 1
            got: dict[str, bytes] = {}
            missing: list[str] = []
            for c in window:
                if c.hash in got or c.hash in missing:
                    continue
                data = self._local_chunk(c.hash)
                if data is None:
                    missing.append(c.hash)
                else:
                    got[c.hash] = data
            pairs: list[tuple[str, str]] = []
            held: dict[str, bytes] = {}
            for h in missing:
                base = (bases or {}).get(h)
                data = self._local_chunk(base) if base is not None else None
                if base is not None and data is not None:
                    pairs.append((h, base))
                    held[base] = data
            if pairs:
                got.update(self.api.fetch_against(pairs, held))
            plain = [h for h in missing if h not in got]
            if plain:
                got.update(self.api.fetch_chunks(plain))
            for c in window:
                yield c, got[c.hash]

    def _download_files(self, items: list[tuple[P.Download, list[ChunkRef], Entry]], failures: list[dict[str, str]]) -> int:
        staged: list[tuple[P.Download, Entry, Path, list[ChunkRef]]] = []
        tmpdir = self.dir / "tmp"
        big = len(items) == 1 and items[0][2].size > DOWNLOAD_WINDOW
        bases: dict[str, str] = {}
        for op, chunks, entry in items:
            rec = self.state.file(op.replace.rel) if op.replace is not None and entry.size >= transfer.DELTA_MIN else None
            if rec is not None and rec.mode != modes.SYMLINK:
                bases.update(delta.pick_bases(delta.offsets([(c.hash, c.size) for c in chunks]), rec.chunks))
        stream = None if big else self._chunks_for([c for _, chunks, _ in items for c in chunks], bases)
        for op, chunks, entry in items:
            if big:
                # named by content, so that a run killed halfway keeps what it wrote
                tmp = tmpdir / f"{entry.content_hash}.part"
                keep = transfer.verified_prefix(tmp, chunks)
                stream = self._chunks_for(chunks[keep:], bases)
            else:
                tmp, keep = tmpdir / f"{uuid.uuid4().hex}.part", 0
            assert stream is not None
            if entry.mode == modes.SYMLINK:
                text = b"".join(next(stream)[1] for _ in chunks)
                try:
                    self._stage_link(tmp, op, text)
                except (OSError, ValueError, CubbyError) as exc:
                    failures.append({"op": "Download", "path": op.remote.path, "error": str(exc)})
                    continue
                staged.append((op, entry, tmp, chunks))
                continue
            with open(tmp, "r+b" if keep else "wb") as out:
                written = sum(c.size for c in chunks[:keep])
                out.seek(written)
                out.truncate()
                for _ in chunks[keep:]:
                    _, data = next(stream)
                    out.write(data)
                    if big and (written // DOWNLOAD_WINDOW) != ((written + len(data)) // DOWNLOAD_WINDOW):
                        self.emit({"event": "progress", "direction": "down", "path": entry.path, "done": written + len(data), "total": entry.size})
                        self._crash_point("download_window")
                    written += len(data)
                if big:
                    out.flush()
                    os.fsync(out.fileno())
            modes.apply_mode(tmp, entry.mode)
            if entry.mtime:
                os.utime(tmp, (entry.mtime, entry.mtime))
            staged.append((op, entry, tmp, chunks))
        if staged:
            transfer.barrier(tmpdir)
        done = 0
        records: list[FileRecord] = []
        with self.state.tx():
            for op, entry, tmp, chunks in staged:
                rel = op.replace.rel if op.replace is not None else self.rel_for(op.remote.path)
                try:
                    target = self._abs(rel)
                    if not self._may_replace(op, target):
                        tmp.unlink(missing_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if op.replace is not None:
                        rec = self.state.file(op.replace.rel)
                        if rec is not None:
                            self._keep_chunks(rec)
                    os.replace(tmp, target)
                    s = os.lstat(target)
                except (OSError, UnsafePath) as exc:
                    tmp.unlink(missing_ok=True)
                    failures.append({"op": "Download", "path": op.remote.path, "error": str(exc)})
                    continue
                offs, o = [], 0
                for c in chunks:
                    offs.append((c.hash, o, c.size))
                    o += c.size
                records.append(
                    FileRecord(rel, s.st_size, s.st_mtime_ns, s.st_ino, entry.content_hash or "", tuple(offs), modes.mode_of(s))
                )
                self.state.set_base(
                    P.BaseItem(entry.ns_id, entry.node_id, op.remote.path, "file", entry.rev, op.remote.hash, s.st_ino)
                )
                done += 1
                self.emit({"op": "Download", "path": op.remote.path, "size": entry.size})
            self.state.put_files(records)
        if done:
            transfer.barrier(self.root)
        self._crash_point("downloaded")
        return done

    def _stage_link(self, tmp: Path, op: P.Download, text: bytes) -> None:
        """Make a downloaded link at ``tmp``: only a link that stays inside the folder, the
        rule the sender's scanner applied (a server or another client could send any text)."""
        rel = op.replace.rel if op.replace is not None else self.rel_for(op.remote.path)
        target = os.fsdecode(text)
        if not modes.link_inside(rel, target):
            raise BadRequest(f"{op.remote.path} is a link to {target!r}, outside the folder: not made", code="link_outside")
        tmp.unlink(missing_ok=True)
        os.symlink(target, tmp)
        if op.remote.mtime:
            os.utime(tmp, (op.remote.mtime, op.remote.mtime), follow_symlinks=False)

    def _may_replace(self, op: P.Download, target: Path) -> bool:
        """Is the local file still what the plan saw? Never overwrite an edit made meanwhile."""
        try:
            s = os.lstat(target)
        except FileNotFoundError:
            return op.replace is None
        if op.replace is None:
            return False
        rec = self.state.file(op.replace.rel)
        return rec is not None and rec.version == op.replace.hash and (rec.size, rec.mtime_ns, rec.inode, rec.mode) == (
            s.st_size, s.st_mtime_ns, s.st_ino, modes.mode_of(s)
        )

    # -- continuous mode ---------------------------------------------------------------------------
    def run_forever(
        self,
        stop: threading.Event,
        waiter: ChangeWaiter,
        *,
        watch: bool = True,
        full_scan_interval: float = 60.0,
        backoff: Backoff | None = None,
    ) -> None:
        """Sync until ``stop`` is set: a pass on every local event (watchdog), every remote
        change (the waiter), and every ``full_scan_interval`` seconds as a safety net. While
        the server is away, passes back off exponentially with jitter; local changes wait on
        disk and are sent on reconnect. Nothing here spins: every wait blocks."""
        from cubby.client.sync.watcher import Watcher

        trigger = self.trigger
        backoff = backoff or Backoff()
        watcher = Watcher(self.root, trigger.set) if watch else None
        if watcher:
            watcher.start()
        wt = threading.Thread(target=self._wait_remote, args=(stop, waiter, trigger), daemon=True, name="cubby-waiter")
        wt.start()
        woken = True
        try:
            while not stop.is_set():
                trigger.clear()
                try:
                    report = self.run_once(local_first=not woken)
                    backoff.reset()
                    self.emit({"event": "pass", **report.to_dict()})
                    delay = full_scan_interval
                except Unavailable as exc:
                    delay = backoff.next()
                    self.emit({"event": "offline", "retry_in": round(delay, 2), "error": exc.message})
                    trigger.wait(delay)  # a local change or a stop request ends the pause early
                    continue
                woken = trigger.wait(delay)
                if stop.is_set():
                    break
                stop.wait(0.05)  # let a burst of events settle into one pass
        finally:
            waiter.close()
            if watcher:
                watcher.stop()
            with self.pass_done:
                self.pass_done.notify_all()
            wt.join(timeout=5)

    def _wait_remote(self, stop: threading.Event, waiter: ChangeWaiter, trigger: threading.Event) -> None:
        backoff = Backoff()
        while not stop.is_set():
            try:
                changed = waiter.wait(self.cursors(), 60.0)
                backoff.reset()
            except CubbyError:
                stop.wait(backoff.next())
                continue
            if changed and not stop.is_set():
                with self.pass_done:
                    mark = self.started
                trigger.set()
                with self.pass_done:
                    # wait for a pass that started after the wake-up, so the cursors moved on
                    self.pass_done.wait_for(lambda m=mark: self.finished > m or stop.is_set(), timeout=120)  # type: ignore[misc]


def _only_ignored(d: Path, root: Path, rules: IgnoreRules) -> bool:
    for dirpath, _dnames, fnames in os.walk(d):
        for name in fnames:
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if not rules.ignored(rel, False):
                return False
    return True


def _base_of(r: P.RemoteItem, inode: int) -> P.BaseItem:
    return P.BaseItem(r.ns_id, r.node_id, r.path, r.kind, r.rev, r.hash, inode)


def _path_of(op: P.Op) -> str:
    for attr in ("path", "new_path"):
        v = getattr(op, attr, None)
        if isinstance(v, str):
            return v
    for attr in ("remote", "local"):
        v = getattr(op, attr, None)
        if v is not None:
            return str(v.path)
    return ""

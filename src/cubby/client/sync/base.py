"""The state every part of the sync engine shares, and the few operations on it they all use.

`EngineCore` holds the folder, the API client, the state database, the chunk cache, the
worker pool and the crash hook, and owns the lock on the folder and the journal cursors. The
parts (`replay`, `uploads`, `downloads`, `apply`, `daemon`) each receive the core in their
constructor rather than reaching into one another, so each can be read alone; `SyncEngine`
(`engine.py`) is the core plus those parts. `abs_path` is the one way from a relative path to
the disk, and `rel_for` the one way from a path of the user's tree to a relative path.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cubby.client import modes
from cubby.client.api import ApiClient
from cubby.client.sync import planner as P
from cubby.client.sync.cache import ChunkCache
from cubby.client.sync.ignore import STATE_DIR
from cubby.client.sync.scanner import KeepBudget, ScanResult, TreeListing, scan
from cubby.client.sync.state import FileRecord, StateDb
from cubby.client.sync.trust import Resolved, local_target
from cubby.client.windows import SCAN_KEEP_BYTES, SCAN_KEEP_FILE
from cubby.core import paths
from cubby.core.hashing import sha256_hex
from cubby.errors import BadRequest, CubbyError, Unavailable

if TYPE_CHECKING:
    from cubby.client.sync.presend import Presend

Emit = Callable[[dict[str, Any]], None]
Failures = list[dict[str, str]]
"""What failed in a round, one ``{"op", "path", "error"}`` per operation (`PassReport.failed`)."""


class SyncLocked(CubbyError):
    code = "sync_locked"
    status = 409


class FolderGone(CubbyError):
    """The synced folder is no longer where the engine opened it: moved, deleted, or a drive
    unmounted from under it (its empty mount point left in its place). A scan there would find
    nothing and plan to delete everything on the server; the engine stops instead."""

    code = "folder_gone"
    status = 409


Identity = tuple[int, int, int, int]
"""(device, inode) of the synced folder and of its state database: what says the folder on
disk is still the one the engine opened (`EngineCore.check_folder`)."""


@dataclass
class PassReport:
    """What a pass did: operations applied per kind, failures, and whether both sides agree."""

    applied: dict[str, int] = field(default_factory=dict)
    failed: list[dict[str, str]] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)
    """Local files and folders the last scan could not read (path, reason): not synced, and the
    pass not converged, until they can be (`cubby.client.sync.scanner.Unreadable`)."""
    changing: list[str] = field(default_factory=list)
    """Local files that changed while the last scan read them (`ScanResult.changing`): not
    synced, and the pass not converged, until one scan reads them whole."""
    converged: bool = False
    rounds: int = 0

    def count(self, name: str, n: int = 1) -> None:
        self.applied[name] = self.applied.get(name, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": self.applied, "failed": self.failed, "blocked": self.blocked, "unreadable": self.unreadable,
            "changing": self.changing, "converged": self.converged, "rounds": self.rounds,
        }


def base_of(r: P.RemoteItem, inode: int) -> P.BaseItem:
    return P.BaseItem(r.ns_id, r.node_id, r.path, r.kind, r.rev, r.hash, inode)


def path_of(op: P.Op) -> str:
    for attr in ("path", "new_path"):
        v = getattr(op, attr, None)
        if isinstance(v, str):
            return v
    for attr in ("remote", "local"):
        v = getattr(op, attr, None)
        if v is not None:
            return str(v.path)
    return ""


class EngineCore:
    """The shared state of one sync engine on one folder (see the module docstring)."""

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
        self.last_scan: ScanResult = ScanResult()
        self._linked_account: dict[str, Any] | None = None
        self.presend: Presend | None = None
        """The chunks of a first sync's new files being sent while it scans (`scan`)."""
        self._folders_of: tuple[ScanResult, dict[str, str], dict[str, str]] | None = None
        """`rel_for`'s folder map, and the scan it was made from."""
        self.identity = self._identity()
        """The folder as opened (`check_folder`)."""
        self.trigger = threading.Event()
        """Set to make a running `SyncDaemon.run` look now (and to wake it when it should stop)."""
        self.pass_done = threading.Condition()
        self.started = 0
        self.finished = 0

    def _identity(self) -> Identity | None:
        try:
            top, db = os.stat(self.root), os.stat(self.dir / "state.db")
        except OSError:
            return None
        return (top.st_dev, top.st_ino, db.st_dev, db.st_ino)

    def check_folder(self) -> None:
        """Raise `FolderGone` unless the folder and its state database on disk are those the
        engine opened (same device and inode). Checked before every scan and after it, so a
        folder renamed while it is scanned is not taken for an emptied one either."""
        if self.identity is None or self._identity() != self.identity:
            raise FolderGone(
                f"{self.root} is no longer the folder this sync opened (moved, deleted, or its drive unmounted); "
                "nothing was changed on the server: run 'cubby sync' on the folder where it is now",
            )

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

    def reload_cursors(self) -> None:
        """Take the journal cursors from the state again (after a replay moved them)."""
        with self._cursor_lock:
            self._cursors = self.state.cursors()

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
        self._linked_account = acct
        who = f"{url.rstrip('/')}#{acct['user_id']}"
        if linked is None:
            self.state.set_meta("linked", who)
        elif linked != who:
            raise BadRequest(f"{self.root} is synced with {linked}, not {who}; use another folder", code="linked_elsewhere")

    def account(self) -> dict[str, Any]:
        """The account (its namespaces and their journal heads): the one `link` just read, the
        first time (so that `cubby sync --once` with nothing to do makes one request, not two),
        else asked of the server."""
        acct, self._linked_account = self._linked_account, None
        return acct if acct is not None else self.api.account()

    def cursors(self) -> dict[int, int]:
        with self._cursor_lock:
            return dict(self._cursors)

    def crash_point(self, where: str) -> None:
        if self.crash_hook is not None:
            self.crash_hook(where)

    def abs_path(self, rel: str, resolved: Resolved | None = None) -> Path:
        """The one way from a relative path to the disk: `trust.local_target` refuses anything
        outside the synced folder or inside its state folder (`UnsafePath`); ``resolved``
        as there, for a batch."""
        return local_target(self.root, rel, resolved)

    def rel_for(self, path: str) -> str:
        """Where a path of the user's tree goes on disk: existing folders keep their on-disk
        spelling (which may differ in case or normalisation), new names are NFC."""
        scanned = self.last_scan
        if self._folders_of is None or self._folders_of[0] is not scanned:
            # once per scan, not per path: a batch of downloads asks for thousands
            self._folders_of = (scanned, {paths.key(i.path): i.rel for i in scanned.items if i.kind == "folder"}, {})
        by_key, placed = self._folders_of[1], self._folders_of[2]

        def folder_rel(folder: str) -> str:
            """Where ``folder`` goes: its scanned spelling, or its parent's place and its name
            (memoised for the scan: a download's files share their folders). Walks up to the
            nearest folder placed before, then down (no recursion: a path may be deep)."""
            up: list[str] = []
            while folder != paths.ROOT and folder not in placed:
                up.append(folder)
                folder = paths.split(folder)[0]
            got = placed.get(folder, "")
            for f in reversed(up):
                got = by_key.get(paths.key(f)) or (f"{got}/{paths.split(f)[1]}" if got else paths.split(f)[1])
                placed[f] = got
            return got

        parent, name = paths.split(path)
        under = folder_rel(parent)
        return f"{under}/{name}" if under else name

    def context(self) -> P.Context:
        nss = self.state.namespaces()
        mounts = {n.mount: (n.ns_id, n.writable) for n in nss.values()}
        mounts.setdefault(paths.ROOT, (0, True))
        return P.Context(mounts=mounts, evicted=tuple(self.state.evicted()), host=self.host, day=dt.date.today().isoformat())

    def scan(self, persist: bool = True, *, keep: bool = False, listed: TreeListing | None = None) -> ScanResult:
        """Scan the folder (`scanner.scan`). With ``keep``, small files hashed keep their bytes
        (`ScanResult.kept`, at most `SCAN_KEEP_BYTES`) for the uploads of this round, which
        release them (`Uploads.upload`); a scan that only plans does not keep any. On a first
        sync (no base, one writable namespace, no file on the server) the chunks of new small
        files go to the server as they are hashed (`presend`), until `end_presend`. ``listed``:
        the tree as just listed (`scanner.list_tree`), not listed again."""
        budget = KeepBudget(SCAN_KEEP_BYTES, SCAN_KEEP_FILE) if keep else None
        self.end_presend()
        nss = list(self.state.namespaces().values()) if keep and persist else []
        if len(nss) == 1 and nss[0].writable and not self.state.has_base() and not self.state.has_remote_files():
            from cubby.client.sync.presend import Presend

            self.presend = Presend(self.api, nss[0].ns_id, self.root)
        on_new = self.presend.add if self.presend is not None else None
        self.check_folder()
        self.last_scan = scan(
            self.root, self.state, self.pool, persist=persist, previous=self.last_scan, keep=budget, on_new=on_new, listed=listed,
            keep_folders=self.started > 1,  # (a process's first pass may be its only one: `cubby sync --once`)
        )
        self.check_folder()
        return self.last_scan

    def end_presend(self) -> set[str]:
        """Wait for the chunks `scan` gave the server ahead of the uploads (`presend`), and
        say which the server took; nothing when none were sent."""
        presend, self.presend = self.presend, None
        return presend.finish() if presend is not None else set()

    def keep_chunks(self, rec: FileRecord) -> None:
        """Copy a file's chunks to the cache before it goes, if it is small enough to be worth it."""
        if rec.size == 0 or rec.size > self.cache.max_bytes // 4 or rec.mode == modes.SYMLINK:
            return
        try:
            with open(self.abs_path(rec.rel), "rb") as fh:
                for h, off, size in rec.chunks:
                    if h in self.cache:
                        continue
                    fh.seek(off)
                    data = fh.read(size)
                    if sha256_hex(data) == h:
                        self.cache.put(h, data)
        except OSError:
            pass

"""The client's local state database (SQLite, in ``DIR/.cubby/state.db``).

It holds what survives a restart:
- ``namespaces``: every namespace synced, where it is mounted, the role, and the journal
  cursor (the last journal id read);
- ``remote``: the server's tree as of the cursors, keyed by (ns_id, node_id) and kept up to date
  by replaying journals, so that a rename of a folder is one row update plus a path rewrite;
- ``base``: the tree as last synced, keyed the same way, with the local inode;
- ``files``: the local file index (size, mtime, inode, content hash and chunk list), so a file
  is re-hashed only when its size, mtime or inode changed;
- ``chunks``: the local chunk index (which local file holds which chunk at which offset), so a
  download first looks for chunks on the local disk;
- ``evicted``: mount points of namespaces the account lost, whose local copies are being removed;
- ``refused``: what the server sent that the client would not apply (`trust.remote_path`), for
  ``cubby status``.

Server data enters the trees only here (`add_namespace`, `apply_journal`, `put_remote_entries`),
and each of them passes every path through `trust.remote_path` first: a refused entry is
recorded in ``refused`` and skipped, never applied.

Journal replay is order-proof. The answers to the client's own operations are recorded at once
(`put_remote_entry`), possibly before the journal entries that precede them are replayed, and a
namespace's listing may be newer than the cursor it starts from. So an entry never takes a node
back to an older state (a node whose rev is newer than the entry keeps its state), and a node's
path is built from its parent's path *in the remote tree now* plus its name, not taken from the
entry: a file another client added to a folder that this client has since moved lands under the
folder's new path, as on the server. A folder's subtree is found by following parents (each
remote row keeps its parent's node id), not by path: for a moment two nodes can hold one path.
A child whose parent is not in the tree (deleted since, or refused) is skipped: the parent's
delete, later in the journal, took it on the server too. The answer to this client's own
folder delete keeps what it removes as ghosts until the journal's entry for that delete
(`delete_remote`): what another client moved out of the folder before the delete comes back
with the journal's move, children and all.

Each change is one transaction: a journal page and its cursor land together, so a crash
leaves either both or neither, and replaying a page again is harmless (every journal entry sets
a node to a state; it does not add to one).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from cubby.client.modes import REGULAR, SYMLINK, version
from cubby.client.sync import trust
from cubby.client.sync.planner import MOUNT_NODE, BaseItem, NodeKey, RemoteItem
from cubby.core import paths
from cubby.model import Entry, JournalEntry

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS namespaces (
    ns_id INTEGER PRIMARY KEY, mount TEXT NOT NULL, role TEXT NOT NULL, cursor INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS evicted (mount TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS refused (
    ns_id INTEGER NOT NULL, source TEXT NOT NULL, path TEXT NOT NULL, reason TEXT NOT NULL,
    jid INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (ns_id, source, path)
);
CREATE TABLE IF NOT EXISTS remote (
    ns_id INTEGER NOT NULL, node_id INTEGER NOT NULL, path TEXT NOT NULL, key TEXT NOT NULL,
    kind TEXT NOT NULL, rev INTEGER NOT NULL, hash TEXT, size INTEGER NOT NULL DEFAULT 0, mtime REAL,
    parent INTEGER, PRIMARY KEY (ns_id, node_id)
);
CREATE INDEX IF NOT EXISTS remote_key ON remote (ns_id, key);
CREATE TABLE IF NOT EXISTS ghosts (
    ns_id INTEGER NOT NULL, node_id INTEGER NOT NULL, root INTEGER NOT NULL, parent INTEGER,
    path TEXT NOT NULL, kind TEXT NOT NULL, rev INTEGER NOT NULL, hash TEXT, size INTEGER NOT NULL DEFAULT 0,
    mtime REAL, PRIMARY KEY (ns_id, node_id)
);
CREATE INDEX IF NOT EXISTS ghosts_parent ON ghosts (ns_id, parent);
CREATE TABLE IF NOT EXISTS base (
    ns_id INTEGER NOT NULL, node_id INTEGER NOT NULL, path TEXT NOT NULL, key TEXT NOT NULL,
    kind TEXT NOT NULL, rev INTEGER NOT NULL, hash TEXT, inode INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (ns_id, node_id)
);
CREATE INDEX IF NOT EXISTS base_key ON base (key);
CREATE TABLE IF NOT EXISTS files (
    rel TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
    hash TEXT NOT NULL, chunks TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    hash TEXT NOT NULL, rel TEXT NOT NULL, offset INTEGER NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (hash, rel)
);
CREATE INDEX IF NOT EXISTS chunks_rel ON chunks (rel);
"""

HELD_QUERY = 500
"""Hashes per query of `StateDb.chunks_held` (SQLite allows 999 parameters before 3.32)."""


@dataclass(frozen=True)
class FileRecord:
    """What the scanner learnt about a local file the last time it read it."""

    rel: str
    size: int
    mtime_ns: int
    inode: int
    hash: str
    chunks: tuple[tuple[str, int, int], ...]
    """(chunk hash, offset, size) in file order."""
    mode: int = REGULAR
    """`cubby.client.modes`: a chmod changes no mtime, so the mode is compared on its own."""

    @property
    def version(self) -> str | None:
        return version(self.hash, self.mode)


@dataclass(frozen=True)
class Namespace:
    ns_id: int
    mount: str
    role: str
    cursor: int

    @property
    def writable(self) -> bool:
        return self.role != "viewer"


def user_path(mount: str, inner: str) -> str:
    """A namespace-internal path as seen in the user's tree."""
    if mount == paths.ROOT:
        return inner
    if inner == paths.ROOT:
        return mount
    return paths.join(mount, inner.lstrip("/"))


MAX_REFUSALS = 1000
"""Refusals kept for ``cubby status``: the newest ones, so a hostile server cannot fill the disk."""


def _range(k: str) -> tuple[str, str]:
    """Keys strictly below folder key ``k``: ``k/`` up to ``k0`` ('0' follows '/')."""
    return k + "/", k + "0"


_BUMP_EPOCH = (
    "INSERT INTO meta (key, value) VALUES ('epoch', '1') "
    "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
)


class StateDb:
    """One connection, used by the engine's thread; a lock makes the odd read from the waiter
    thread safe."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        if "mode" not in {r[1] for r in self.db.execute("PRAGMA table_info(files)")}:
            # a state database from before modes were kept: every file it knows is regular
            self.db.execute(f"ALTER TABLE files ADD COLUMN mode INTEGER NOT NULL DEFAULT {REGULAR}")
        self._lock = threading.RLock()
        self._depth = 0
        self._untracked = 0
        """Rows `set_settled` changed: not counted in `generation`."""
        self._stamps: tuple[tuple[int, int], dict[str, tuple[tuple[int, int, int, int], str | None]]] | None = None
        self._answered: dict[int, set[int]] = {}
        """ns_id -> journal ids of this client's own changes whose answers are in the remote
        tree (committed): what `skip_answered` may pass over without reading the journal."""
        self._answering: list[tuple[int, int]] = []
        """(ns_id, jid) of answers written by the open transaction: answered once it commits."""
        if "parent" not in {r[1] for r in self.db.execute("PRAGMA table_info(remote)")}:
            self._add_parents()
        self.db.execute("CREATE INDEX IF NOT EXISTS remote_parent ON remote (ns_id, parent)")

    def _add_parents(self) -> None:
        """A state database from before the remote tree kept each node's parent: add the
        column and fill it from the paths (each row's parent is the row at its folder's path),
        in one transaction."""
        with self.tx() as db:
            db.execute("ALTER TABLE remote ADD COLUMN parent INTEGER")
            rows = db.execute("SELECT ns_id, node_id, path, key FROM remote").fetchall()
            at = {(ns, key): nid for ns, nid, _, key in rows}
            db.executemany(
                "UPDATE remote SET parent = ? WHERE ns_id = ? AND node_id = ?",
                [(at.get((ns, paths.key(paths.split(p)[0]))), ns, nid) for ns, nid, p, _ in rows if p != paths.ROOT],
            )

    def generation(self) -> tuple[int, int]:
        """Changes so far: rows this connection changed (but for the settled plan's fingerprint,
        `set_settled`, which no reader of the trees or the file index depends on), and SQLite's
        ``data_version`` (which moves when another connection commits). Equal generations mean
        nothing was written in between, so whatever was read from the database then is still
        true. (Leaving the fingerprint out lets the pass after the one that wrote it reuse
        what the scan before it read: `cubby.client.sync.scanner.scan`.)"""
        with self._lock:
            return self.db.total_changes - self._untracked, int(self.db.execute("PRAGMA data_version").fetchone()[0])

    def epoch(self) -> int:
        """Transactions that changed anything, ever, by any process: `generation` across
        processes. Every write goes through `tx`, which counts itself (``meta.epoch``) in the
        same transaction; so an equal epoch means the trees and the file index are unchanged."""
        value = self.get_meta("epoch")
        return int(value) if value is not None else 0

    def settled(self) -> str | None:
        """The fingerprint of the last plan that left nothing to do (`set_settled`)."""
        return self.get_meta("settled")

    def settled_listing(self) -> str | None:
        """The fingerprint of the listing of the tree that plan was made from, when every file
        in it was indexed as listed (`set_settled`)."""
        return self.get_meta("settled_listing")

    def set_settled(self, fingerprint: str | None, listing: str | None = None) -> None:
        """Remember (or, with None, forget) a settled plan's fingerprint, and the fingerprint
        of the tree's listing it was made from (or none), for a pass of a new process
        (`cubby.client.sync.engine.SyncEngine`). Written outside `tx` on purpose: this write is
        no change to the trees, so it does not move the epoch it is checked against."""
        with self._lock:
            if self._depth:
                raise RuntimeError("set_settled inside a transaction would be counted as a change")
            before = self.db.total_changes
            for key, value in (("settled", fingerprint), ("settled_listing", listing if fingerprint is not None else None)):
                if value is None:
                    self.db.execute("DELETE FROM meta WHERE key = ?", (key,))
                else:
                    self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
            self._untracked += self.db.total_changes - before

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; nested uses join the outer one."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self.db
                finally:
                    self._depth -= 1
                return
            self.db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            before = self.db.total_changes
            try:
                yield self.db
                if self.db.total_changes != before:
                    self.db.execute(_BUMP_EPOCH)
            except BaseException:
                self._depth = 0
                self._answering.clear()
                self.db.execute("ROLLBACK")
                raise
            self._depth = 0
            self.db.execute("COMMIT")
            for ns_id, jid in self._answering:
                self._answered.setdefault(ns_id, set()).add(jid)
            self._answering.clear()

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[Any]:
        with self._lock:
            return self.db.execute(sql, tuple(args)).fetchall()

    # -- meta ----------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._all("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- namespaces ----------------------------------------------------------------------------
    def namespaces(self) -> dict[int, Namespace]:
        return {r[0]: Namespace(r[0], r[1], r[2], r[3]) for r in self._all("SELECT ns_id, mount, role, cursor FROM namespaces")}

    def cursors(self) -> dict[int, int]:
        return {ns: n.cursor for ns, n in self.namespaces().items()}

    def evicted(self) -> list[str]:
        return [r[0] for r in self._all("SELECT mount FROM evicted")]

    def clear_evicted(self, mount: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM evicted WHERE mount = ?", (mount,))

    def add_namespace(self, ns_id: int, mount: str, role: str, head: int, listing: Iterable[Entry]) -> None:
        """A namespace seen for the first time: its listing (taken after ``head`` was read)
        becomes the remote tree, and the cursor starts at ``head``; the journal after it is
        replayed next, idempotently."""
        self._answered.pop(ns_id, None)
        with self.tx() as db:
            db.execute("DELETE FROM remote WHERE ns_id = ?", (ns_id,))
            db.execute("DELETE FROM ghosts WHERE ns_id = ?", (ns_id,))
            db.execute("DELETE FROM evicted WHERE mount = ?", (mount,))
            if mount != paths.ROOT:
                self._put_remote(db, RemoteItem(ns_id, MOUNT_NODE, mount, "folder", 0))
            for e in listing:
                # A listing shows a shared folder's mount as a folder with ``target_ns``: it is
                # that namespace's, learnt from the account, not a folder of this one.
                if e.kind not in ("file", "folder") or e.path == paths.ROOT or e.target_ns is not None:
                    continue
                path = self._vetted(db, ns_id, "listing", e.path, 0, within=mount)
                if path is not None:
                    self._put_remote(db, RemoteItem(ns_id, e.node_id, path, e.kind, e.rev, version(e.content_hash, e.mode), e.size, e.mtime), e.parent_id)
            db.execute("INSERT OR REPLACE INTO namespaces (ns_id, mount, role, cursor) VALUES (?, ?, ?, ?)", (ns_id, mount, role, head))

    def update_namespace(self, ns_id: int, mount: str, role: str) -> None:
        """Role or mount point changed: a new mount point moves every remote path with it."""
        with self.tx() as db:
            old = db.execute("SELECT mount FROM namespaces WHERE ns_id = ?", (ns_id,)).fetchone()
            if old and old[0] != mount:
                self._rebase(db, "remote", ns_id, old[0], mount)
                db.execute("UPDATE remote SET path = ?, key = ? WHERE ns_id = ? AND node_id = ?", (mount, paths.key(mount), ns_id, MOUNT_NODE))
            db.execute("UPDATE namespaces SET mount = ?, role = ? WHERE ns_id = ?", (mount, role, ns_id))

    def move_mount(self, ns_id: int, mount: str) -> None:
        """This client moved the namespace's mount point (a local rename the server accepted):
        the remote and base trees move with it, so nothing below it is planned again."""
        with self.tx() as db:
            old = db.execute("SELECT mount FROM namespaces WHERE ns_id = ?", (ns_id,)).fetchone()
            if not old or old[0] == mount:
                return
            for table in ("remote", "base"):
                self._rebase(db, table, ns_id, old[0], mount)
                db.execute(
                    f"UPDATE {table} SET path = ?, key = ? WHERE ns_id = ? AND node_id = ?",
                    (mount, paths.key(mount), ns_id, MOUNT_NODE),
                )
            db.execute("UPDATE namespaces SET mount = ? WHERE ns_id = ?", (mount, ns_id))

    def drop_namespace(self, ns_id: int) -> None:
        """The account lost a namespace: forget its remote tree and mark its mount evicted, so
        the planner removes the local copy (keeping local edits outside it)."""
        self._answered.pop(ns_id, None)
        with self.tx() as db:
            row = db.execute("SELECT mount FROM namespaces WHERE ns_id = ?", (ns_id,)).fetchone()
            db.execute("DELETE FROM remote WHERE ns_id = ?", (ns_id,))
            db.execute("DELETE FROM ghosts WHERE ns_id = ?", (ns_id,))
            db.execute("DELETE FROM namespaces WHERE ns_id = ?", (ns_id,))
            if row and row[0] != paths.ROOT:
                db.execute("INSERT OR IGNORE INTO evicted (mount) VALUES (?)", (row[0],))

    def skip_answered(self, ns_id: int, head: int) -> bool:
        """Move the cursor of ``ns_id`` to ``head`` without reading the journal, when every
        journal id after the cursor up to ``head`` is one of this client's own changes whose
        answer is already in the remote tree (`put_remote_entries`, committed): then the
        journal holds nothing else there, and replaying it would write what the answers wrote.
        A first sync reads back an entry per file and folder it made otherwise (a quarter of
        its time on a tree of small files). Any id not answered here (another client's change,
        a folder a commit made on its own, a delete, a refused answer) and nothing moves: the
        caller reads the journal. Answers are known to this process only, so after a restart
        the journal is read as ever. True when the cursor is at ``head`` now."""
        with self.tx() as db:
            row = db.execute("SELECT cursor FROM namespaces WHERE ns_id = ?", (ns_id,)).fetchone()
            if row is None:
                return False
            cursor = int(row[0])
            if cursor >= head:
                return cursor == head
            answered = self._answered.get(ns_id, set())
            if head - cursor > len(answered) or any(j not in answered for j in range(cursor + 1, head + 1)):
                return False
            db.execute("UPDATE namespaces SET cursor = ? WHERE ns_id = ?", (head, ns_id))
        self._answered[ns_id] = {j for j in answered if j > head}
        return True

    def apply_journal(self, ns_id: int, entries: Iterable[JournalEntry], cursor: int) -> None:
        """Replay journal entries into the remote tree and move the cursor, in one transaction.
        Entries are applied by node id; a folder move rewrites the paths below it and a folder
        delete removes its subtree, as the server did. See the module docstring for why an
        entry never takes a node back and why paths come from the parent in the tree."""
        with self.tx() as db:
            row = db.execute("SELECT mount FROM namespaces WHERE ns_id = ?", (ns_id,)).fetchone()
            if row is None:
                return
            mount = row[0]
            for e in entries:
                cur = db.execute("SELECT path, kind, rev FROM remote WHERE ns_id = ? AND node_id = ?", (ns_id, e.node_id)).fetchone()
                if e.kind not in ("file", "folder"):
                    # A mount point: mounts are learnt from the account. But a folder of this
                    # namespace that became one (its owner shared it) now lives in the shared
                    # namespace: its rows here are gone on the server and must not linger.
                    if e.op == "mount" and cur is not None and cur[1] == "folder" and e.node_id != MOUNT_NODE:
                        lo, hi = _range(paths.key(cur[0]))
                        db.execute("DELETE FROM base WHERE ns_id = ? AND key > ? AND key < ?", (ns_id, lo, hi))
                        db.execute("DELETE FROM base WHERE ns_id = ? AND node_id = ?", (ns_id, e.node_id))
                        self._delete_remote(db, ns_id, e.node_id, "folder")
                    continue
                if e.node_id == MOUNT_NODE:
                    self._refuse(db, trust.Refusal(ns_id, "journal", trust.shown(e.path), "names the namespace's root", e.jid))
                    continue
                if cur is not None and cur[2] > e.jid:
                    continue  # this node's state here is newer (an answer, or the listing)
                if cur is None:
                    ghost = self._ghost(db, ns_id, e.node_id)
                    if ghost is not None and ghost[2] >= e.jid:
                        continue  # its state as a ghost is as new (or newer): it stays one
                    if ghost is not None:  # the journal says what became of it from here on
                        db.execute("DELETE FROM ghosts WHERE ns_id = ? AND node_id = ?", (ns_id, e.node_id))
                if e.op == "delete":
                    if cur is not None:
                        self._delete_remote(db, ns_id, e.node_id, cur[1])
                    # what was still below it when this client deleted it is gone on the server
                    db.execute("DELETE FROM ghosts WHERE ns_id = ? AND root = ?", (ns_id, e.node_id))
                    continue
                held = self._ghost(db, ns_id, e.parent_id) if e.parent_id else None
                if held is not None:
                    # under a folder this client's delete took ahead of the journal: a ghost too
                    self._join_ghosts(db, ns_id, mount, e, cur, held)
                    continue
                path = self._journal_path(db, ns_id, mount, e)
                if path is None:
                    if cur is not None and e.parent_id and not self._holds_folder(db, ns_id, e.parent_id):
                        # Its newest state is under a folder this tree no longer holds: an
                        # answer put it here ahead of the journal, and it would stay at a path
                        # the server no longer has. (A refused entry leaves the node as it is.)
                        self._delete_remote(db, ns_id, e.node_id, cur[1])
                    continue
                if cur is not None and cur[1] == "folder" and cur[0] != path:
                    self._move_below(db, ns_id, e.node_id, path)
                self._put_remote(db, RemoteItem(ns_id, e.node_id, path, e.kind, e.rev, version(e.content_hash, e.mode), e.size, e.mtime), e.parent_id)
                if cur is None and e.kind == "folder":
                    self._raise_ghosts(db, ns_id, e.node_id, path)
            db.execute("UPDATE namespaces SET cursor = MAX(cursor, ?) WHERE ns_id = ?", (cursor, ns_id))

    def _journal_path(self, db: sqlite3.Connection, ns_id: int, mount: str, e: JournalEntry) -> str | None:
        """Where entry ``e``'s node is in the user's tree now: under its parent's current path
        (the root's children: under the mount), or None when it is refused or its parent is
        not in the tree."""
        try:
            inner = trust.remote_path(e.path, in_user_tree=False)
        except trust.UnsafePath as exc:
            self._refuse(db, trust.Refusal(ns_id, "journal", trust.shown(e.path), exc.message, e.jid))
            return None
        as_sent = self._vetted(db, ns_id, "journal", user_path(mount, inner), e.jid, within=mount)
        if as_sent is None:
            return None
        folder, name = paths.split(inner)
        parent = None
        if e.parent_id:
            parent = db.execute("SELECT path, kind FROM remote WHERE ns_id = ? AND node_id = ?", (ns_id, e.parent_id)).fetchone()
        if parent is not None and parent[1] == "folder":
            return self._vetted(db, ns_id, "journal", paths.join(parent[0], name), e.jid, within=mount)
        if folder != paths.ROOT:
            return None  # its folder is gone (its delete follows in the journal) or was refused
        return as_sent

    # -- what was refused ----------------------------------------------------------------------
    def _vetted(self, db: sqlite3.Connection, ns_id: int, source: str, path: str, jid: int, *, within: str) -> str | None:
        """``path`` (of the user's tree) normalised, or None after recording why it is refused."""
        try:
            norm = trust.remote_path(path)
            if norm == within:
                return None  # the mount folder itself: the synthetic MOUNT_NODE row stands for it
            if not paths.is_within(norm, within):
                raise trust.UnsafePath(f"{path!r} is not inside its shared folder {within!r}")
        except trust.UnsafePath as exc:
            self._refuse(db, trust.Refusal(ns_id, source, trust.shown(path), exc.message, jid))
            return None
        return norm

    def _refuse(self, db: sqlite3.Connection, r: trust.Refusal) -> None:
        db.execute(
            "INSERT OR REPLACE INTO refused (ns_id, source, path, reason, jid) VALUES (?,?,?,?,?)",
            (r.ns_id, r.source, r.path, trust.shown(r.reason), r.jid),
        )
        db.execute(
            "DELETE FROM refused WHERE rowid NOT IN (SELECT rowid FROM refused ORDER BY rowid DESC LIMIT ?)", (MAX_REFUSALS,)
        )

    def record_refusal(self, r: trust.Refusal) -> None:
        with self.tx() as db:
            self._refuse(db, r)

    def refusals(self) -> list[trust.Refusal]:
        """What the server sent and the client never applied, oldest first."""
        return [trust.Refusal(*r) for r in self._all("SELECT ns_id, source, path, reason, jid FROM refused ORDER BY rowid")]

    # -- remote tree ---------------------------------------------------------------------------
    def _put_remote(self, db: sqlite3.Connection, r: RemoteItem, parent: int | None = None) -> None:
        self._put_remotes(db, [(r, parent)])

    def put_remote_entry(self, e: Entry) -> bool:
        """Record what the server answered to our own change (the journal will say it again).
        False when the answer is refused (recorded, not applied): the caller must not act on it."""
        return self.put_remote_entries([e])[0]

    def put_remote_entries(self, entries: Iterable[Entry]) -> list[bool]:
        """`put_remote_entry` of many answers (a batch of commits or folder creations), in one
        transaction and one statement for the rows written; one flag per entry, in order. Each
        answer is judged as it would be alone: an answer about a node already written by an
        earlier one of the batch sees that row, as it would one after the other."""
        out: list[bool] = []
        entries = list(entries)
        with self.tx() as db:
            mounts: dict[int, str] = {}
            rows: dict[NodeKey, tuple[RemoteItem, int | None]] = {}  # to write, by node (the later answer wins), with its parent
            before = self._remote_rows(db, [(e.ns_id, e.node_id) for e in entries])
            # ghosts are rare (this client's folder deletes, until the journal catches up):
            # a batch of new files looks none up when there are none
            ghostly = db.execute("SELECT 1 FROM ghosts LIMIT 1").fetchone() is not None
            for e in entries:
                within = mounts.get(e.ns_id)
                if within is None:
                    row = db.execute("SELECT mount FROM namespaces WHERE ns_id = ?", (e.ns_id,)).fetchone()
                    within = mounts[e.ns_id] = row[0] if row else paths.ROOT
                path = self._vetted(db, e.ns_id, "answer", e.path, e.rev, within=within)
                if path is None or e.node_id == MOUNT_NODE or e.kind not in ("file", "folder"):
                    out.append(False)
                    continue
                node = (e.ns_id, e.node_id)
                self._answering.append((e.ns_id, e.rev))
                mine = rows[node][0] if node in rows else None
                cur = (mine.path, mine.kind, mine.rev) if mine is not None else before.get(node)
                out.append(True)
                if cur is not None and cur[2] > e.rev:
                    continue
                if cur is not None and cur[1] == "folder" and cur[0] != path:
                    self._put_remotes(db, rows.values())  # the rewrite below reads the table
                    rows.clear()
                    self._move_below(db, e.ns_id, e.node_id, path)
                    before = self._remote_rows(db, [(x.ns_id, x.node_id) for x in entries])  # it moved rows below
                rows[node] = (RemoteItem(e.ns_id, e.node_id, path, e.kind, e.rev, version(e.content_hash, e.mode), e.size, e.mtime), e.parent_id)
                if ghostly and cur is None and (ghost := self._ghost(db, e.ns_id, e.node_id)) is not None and ghost[2] <= e.rev:
                    # a ghost of this client's own delete, moved since (by another client, then
                    # by this one): it is back, and what was below it with it
                    db.execute("DELETE FROM ghosts WHERE ns_id = ? AND node_id = ?", node)
                    if e.kind == "folder":
                        self._put_remotes(db, rows.values())
                        rows.clear()
                        self._raise_ghosts(db, e.ns_id, e.node_id, path)
                        before = self._remote_rows(db, [(x.ns_id, x.node_id) for x in entries])
            self._put_remotes(db, rows.values())
        return out

    def _remote_rows(self, db: sqlite3.Connection, nodes: list[NodeKey]) -> dict[NodeKey, tuple[str, str, int]]:
        """(path, kind, rev) of each of ``nodes`` the remote tree holds, in a statement per 500
        nodes of a namespace (answers come by the thousand: a statement each was a third of
        recording them)."""
        found: dict[NodeKey, tuple[str, str, int]] = {}
        by_ns: dict[int, list[int]] = {}
        for ns_id, node_id in nodes:
            by_ns.setdefault(ns_id, []).append(node_id)
        for ns_id, ids in by_ns.items():
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                q = f"SELECT node_id, path, kind, rev FROM remote WHERE ns_id = ? AND node_id IN ({','.join('?' * len(part))})"
                for node_id, path, kind, rev in db.execute(q, (ns_id, *part)):
                    found[(ns_id, node_id)] = (path, kind, rev)
        return found

    def _put_remotes(self, db: sqlite3.Connection, items: Iterable[tuple[RemoteItem, int | None]]) -> None:
        """Write remote rows, each with its parent's node id (what `_below` follows)."""
        db.executemany(
            "INSERT OR REPLACE INTO remote (ns_id, node_id, path, key, kind, rev, hash, size, mtime, parent) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [(r.ns_id, r.node_id, r.path, paths.key(r.path), r.kind, r.rev, r.hash, r.size, r.mtime, parent) for r, parent in items],
        )

    def _below(self, db: sqlite3.Connection, ns_id: int, node_id: int) -> list[tuple[int, int, str]]:
        """(node id, parent id, path) of everything below folder ``node_id`` in the remote tree,
        parents before children, found by following parents, not paths. While answers run ahead
        of the journal, two nodes can hold one path for a moment (this client's folder moved
        to where another client's folder is about to be deleted, later in the journal): a
        subtree found by path would be both folders' children, and a delete replayed for one
        would take the other's. Each node is visited once, so a cycle a hostile server
        claims cannot loop."""
        return [(r[0], r[1], r[2]) for r in self._descendants(db, "remote", ns_id, node_id)]

    @staticmethod
    def _descendants(db: sqlite3.Connection, table: str, ns_id: int, node_id: int) -> list[tuple[Any, ...]]:
        """Rows (node_id, parent, path, kind, rev, hash, size, mtime) of ``table`` (``remote``
        or ``ghosts``) below ``node_id`` by their parents, parents before children."""
        out: list[tuple[Any, ...]] = []
        seen = {node_id}
        level = [node_id]
        while level:
            found: list[tuple[Any, ...]] = []
            for i in range(0, len(level), 500):
                part = level[i : i + 500]
                q = (f"SELECT node_id, parent, path, kind, rev, hash, size, mtime FROM {table} "
                     f"WHERE ns_id = ? AND parent IN ({','.join('?' * len(part))})")
                found += [r for r in db.execute(q, (ns_id, *part)) if r[0] not in seen and r[0] != MOUNT_NODE]
            seen.update(r[0] for r in found)
            out += found
            level = [r[0] for r in found]
        return out

    def _move_below(self, db: sqlite3.Connection, ns_id: int, node_id: int, new: str) -> None:
        """Folder ``node_id`` is now at ``new``: every node below it follows, each at its
        parent's new path plus its own name."""
        at = {node_id: new}
        moved = []
        for nid, parent, path in self._below(db, ns_id, node_id):
            p = at[nid] = paths.join(at[parent], paths.split(path)[1])
            moved.append((p, paths.key(p), ns_id, nid))
        db.executemany("UPDATE remote SET path = ?, key = ? WHERE ns_id = ? AND node_id = ?", moved)

    def _delete_remote(self, db: sqlite3.Connection, ns_id: int, node_id: int, kind: str) -> None:
        """Remove a node from the remote tree, and everything below it if it is a folder."""
        doomed = [(ns_id, nid) for nid, _, _ in self._below(db, ns_id, node_id)] if kind == "folder" else []
        db.executemany("DELETE FROM remote WHERE ns_id = ? AND node_id = ?", [*doomed, (ns_id, node_id)])

    def delete_remote(self, node: NodeKey) -> None:
        """This client's own delete, answered. What lay below a folder in this tree is kept
        as ghosts until the journal's entry for that delete: another client may have moved
        some of it out of the folder before the delete (this tree, behind the journal, does
        not know yet), and when the journal's move puts such a folder back, its ghosts come
        back below it (`_raise_ghosts`) instead of being lost."""
        ns_id, node_id = node
        with self.tx() as db:
            cur = db.execute("SELECT kind FROM remote WHERE ns_id = ? AND node_id = ?", node).fetchone()
            if cur is None:
                return
            if cur[0] == "folder":  # the folder too: what the journal adds to it before the delete joins it
                below = [node_id, *(nid for nid, _, _ in self._below(db, ns_id, node_id))]
                for i in range(0, len(below), 500):
                    part = below[i : i + 500]
                    db.execute(
                        "INSERT OR REPLACE INTO ghosts (ns_id, node_id, root, parent, path, kind, rev, hash, size, mtime) "
                        f"SELECT ns_id, node_id, ?, parent, path, kind, rev, hash, size, mtime FROM remote "
                        f"WHERE ns_id = ? AND node_id IN ({','.join('?' * len(part))})",
                        (node_id, ns_id, *part),
                    )
            self._delete_remote(db, ns_id, node_id, cur[0])

    def _holds_folder(self, db: sqlite3.Connection, ns_id: int, node_id: int) -> bool:
        row = db.execute("SELECT kind FROM remote WHERE ns_id = ? AND node_id = ?", (ns_id, node_id)).fetchone()
        return row is not None and row[0] == "folder"

    def _ghost(self, db: sqlite3.Connection, ns_id: int, node_id: int) -> tuple[int, str, int] | None:
        """(root, path, rev) of a ghost (`delete_remote`), or None."""
        row = db.execute("SELECT root, path, rev FROM ghosts WHERE ns_id = ? AND node_id = ?", (ns_id, node_id)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), int(row[2]))

    def _join_ghosts(
        self, db: sqlite3.Connection, ns_id: int, mount: str, e: JournalEntry, cur: tuple[str, str, int] | None,
        parent: tuple[int, str, int],
    ) -> None:
        """Journal entry ``e`` puts its node in a ghost folder (``parent``): the node, and what
        the tree holds below it, become ghosts of the same delete."""
        try:
            inner = trust.remote_path(e.path, in_user_tree=False)
        except trust.UnsafePath as exc:
            self._refuse(db, trust.Refusal(ns_id, "journal", trust.shown(e.path), exc.message, e.jid))
            return
        if self._vetted(db, ns_id, "journal", user_path(mount, inner), e.jid, within=mount) is None:
            return
        root, where = parent[0], paths.join(parent[1], paths.split(inner)[1])
        at = {e.node_id: where}
        rows = [(ns_id, e.node_id, root, e.parent_id, where, e.kind, e.rev, version(e.content_hash, e.mode), e.size, e.mtime)]
        if cur is not None and cur[1] == "folder":
            for nid, pid, p, kind, rev, h, size, mtime in self._descendants(db, "remote", ns_id, e.node_id):
                at[nid] = paths.join(at[pid], paths.split(p)[1])
                rows.append((ns_id, nid, root, pid, at[nid], kind, rev, h, size, mtime))
        db.executemany(
            "INSERT OR REPLACE INTO ghosts (ns_id, node_id, root, parent, path, kind, rev, hash, size, mtime) VALUES (?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        db.executemany("DELETE FROM remote WHERE ns_id = ? AND node_id = ?", [(ns_id, r[1]) for r in rows])

    def _raise_ghosts(self, db: sqlite3.Connection, ns_id: int, node_id: int, path: str) -> None:
        """Folder ``node_id`` is back in the tree at ``path`` (the journal moved it after this
        client's delete had taken it as a ghost): what was below it comes back below it."""
        found = self._descendants(db, "ghosts", ns_id, node_id)
        self._put_remotes(db, [(RemoteItem(ns_id, nid, p, kind, rev, h, size, mtime), parent) for nid, parent, p, kind, rev, h, size, mtime in found])
        db.executemany("DELETE FROM ghosts WHERE ns_id = ? AND node_id = ?", [(ns_id, r[0]) for r in found])
        # each at its parent's path now, with what answers put below those ghosts meanwhile
        self._move_below(db, ns_id, node_id, path)

    def remote_items(self) -> list[RemoteItem]:
        return [RemoteItem(*r) for r in self._all("SELECT ns_id, node_id, path, kind, rev, hash, size, mtime FROM remote")]

    # -- base tree -----------------------------------------------------------------------------
    def has_base(self) -> bool:
        """Does the base tree hold anything (has this folder synced before)?"""
        return bool(self._all("SELECT 1 FROM base LIMIT 1"))

    def has_remote_files(self) -> bool:
        """Does the remote tree hold any file?"""
        return bool(self._all("SELECT 1 FROM remote WHERE kind = 'file' LIMIT 1"))

    def base_items(self) -> list[BaseItem]:
        return [BaseItem(*r) for r in self._all("SELECT ns_id, node_id, path, kind, rev, hash, inode FROM base")]

    def mount_bases(self) -> dict[int, BaseItem]:
        """Namespace id -> the base row of its mount folder (with the folder's inode)."""
        rows = self._all("SELECT ns_id, node_id, path, kind, rev, hash, inode FROM base WHERE node_id = ?", (MOUNT_NODE,))
        return {int(r[0]): BaseItem(*r) for r in rows}

    def set_base(self, b: BaseItem) -> None:
        """Record an agreed item; any other base row at the same key is superseded."""
        self.set_bases([b])

    def set_bases(self, items: Iterable[BaseItem]) -> None:
        """`set_base` of many items, in one transaction and a statement per kind of change (a
        download records a thousand files at a time). Of two items at one key, the later wins,
        as it would one after the other."""
        last = {paths.key(b.path): b for b in items}
        if not last:
            return
        with self.tx() as db:
            db.executemany(
                "DELETE FROM base WHERE key = ? AND NOT (ns_id = ? AND node_id = ?)",
                [(k, b.ns_id, b.node_id) for k, b in last.items()],
            )
            db.executemany(
                "INSERT OR REPLACE INTO base (ns_id, node_id, path, key, kind, rev, hash, inode) VALUES (?,?,?,?,?,?,?,?)",
                [(b.ns_id, b.node_id, b.path, k, b.kind, b.rev, b.hash, b.inode) for k, b in last.items()],
            )

    def forget_base(self, node: NodeKey) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM base WHERE ns_id = ? AND node_id = ?", node)

    def forget_base_below(self, path: str) -> None:
        lo, hi = _range(paths.key(path))
        with self.tx() as db:
            db.execute("DELETE FROM base WHERE key > ? AND key < ?", (lo, hi))

    def move_base(self, node: NodeKey, new_path: str, inode: int | None = None) -> None:
        """The base item follows a move, and so does everything below a folder."""
        with self.tx() as db:
            cur = db.execute("SELECT path, kind FROM base WHERE ns_id = ? AND node_id = ?", node).fetchone()
            if cur is None:
                return
            if cur[1] == "folder" and cur[0] != new_path:
                self._rebase(db, "base", None, cur[0], new_path)
            db.execute("UPDATE base SET path = ?, key = ? WHERE ns_id = ? AND node_id = ?", (new_path, paths.key(new_path), *node))
            if inode is not None:
                db.execute("UPDATE base SET inode = ? WHERE ns_id = ? AND node_id = ?", (inode, *node))

    def _rebase(self, db: sqlite3.Connection, table: str, ns_id: int | None, old: str, new: str) -> None:
        lo, hi = _range(paths.key(old))
        q = f"SELECT ns_id, node_id, path FROM {table} WHERE key > ? AND key < ?"
        args: tuple[Any, ...] = (lo, hi)
        if ns_id is not None:
            q += " AND ns_id = ?"
            args += (ns_id,)
        for ns, nid, p in db.execute(q, args).fetchall():
            np = paths.rebase(p, old, new)
            db.execute(f"UPDATE {table} SET path = ?, key = ? WHERE ns_id = ? AND node_id = ?", (np, paths.key(np), ns, nid))

    # -- local file index ----------------------------------------------------------------------
    def files(self) -> dict[str, FileRecord]:
        out = {}
        for rel, size, mtime_ns, inode, h, chunks, mode in self._all("SELECT rel, size, mtime_ns, inode, hash, chunks, mode FROM files"):
            out[rel] = FileRecord(rel, size, mtime_ns, inode, h, tuple(tuple(c) for c in orjson.loads(chunks)), mode)  # type: ignore[misc]
        return out

    def file_stamps(self) -> dict[str, tuple[tuple[int, int, int, int], str | None]]:
        """rel -> ((size, mtime_ns, inode, mode), version) of every indexed file: what a scan
        compares, without decoding every chunk list (most of the cost of `files`). Read once
        and kept while the database is unchanged (`generation`): a pass with nothing changed
        reads no row. Callers must not modify the mapping."""
        now = self.generation()
        if self._stamps is not None and self._stamps[0] == now:
            return self._stamps[1]
        stamps = {
            rel: ((size, mtime_ns, inode, mode), version(h, mode))
            for rel, size, mtime_ns, inode, h, mode in self._all("SELECT rel, size, mtime_ns, inode, hash, mode FROM files")
        }
        self._stamps = (now, stamps)
        return stamps

    def file(self, rel: str) -> FileRecord | None:
        rows = self._all("SELECT rel, size, mtime_ns, inode, hash, chunks, mode FROM files WHERE rel = ?", (rel,))
        if not rows:
            return None
        rel, size, mtime_ns, inode, h, chunks, mode = rows[0]
        return FileRecord(rel, size, mtime_ns, inode, h, tuple(tuple(c) for c in orjson.loads(chunks)), mode)  # type: ignore[misc]

    def put_files(self, recs: Iterable[FileRecord]) -> None:
        """Index files (replacing what was known at their paths), a statement per table for
        the lot; of two records of one path, the later wins."""
        last = {rec.rel: rec for rec in recs}
        if not last:
            return
        with self.tx() as db:
            db.executemany("DELETE FROM chunks WHERE rel = ?", [(rel,) for rel in last])
            db.executemany(
                "INSERT OR REPLACE INTO files (rel, size, mtime_ns, inode, hash, chunks, mode) VALUES (?,?,?,?,?,?,?)",
                [(r.rel, r.size, r.mtime_ns, r.inode, r.hash, orjson.dumps(r.chunks).decode(), r.mode) for r in last.values()],
            )
            db.executemany(
                "INSERT OR IGNORE INTO chunks (hash, rel, offset, size) VALUES (?,?,?,?)",
                # a link's "chunk" is its target's text, not bytes a download may read back
                [(h, r.rel, off, size) for r in last.values() if r.mode != SYMLINK for h, off, size in r.chunks],
            )

    def drop_files(self, rels: Iterable[str]) -> None:
        with self.tx() as db:
            for rel in rels:
                db.execute("DELETE FROM files WHERE rel = ?", (rel,))
                db.execute("DELETE FROM chunks WHERE rel = ?", (rel,))

    def rename_files(self, old_rel: str, new_rel: str) -> None:
        """Follow a local rename of a file or a folder (everything below it)."""
        with self.tx() as db:
            rows = db.execute(
                "SELECT rel FROM files WHERE rel = ? OR (rel > ? AND rel < ?)", (old_rel, old_rel + "/", old_rel + "0")
            ).fetchall()
            for (rel,) in rows:
                nr = new_rel + rel[len(old_rel):]
                db.execute("DELETE FROM files WHERE rel = ?", (nr,))
                db.execute("DELETE FROM chunks WHERE rel = ?", (nr,))
                db.execute("UPDATE files SET rel = ? WHERE rel = ?", (nr, rel))
                db.execute("UPDATE chunks SET rel = ? WHERE rel = ?", (nr, rel))

    def chunks_held(self, hashes: Iterable[str]) -> set[str]:
        """Which of ``hashes`` some local file held when last read (`chunk_locations` finds
        where): one query per `HELD_QUERY` hashes, so that a download asks the index once per
        window rather than once per chunk (a first download finds none)."""
        todo = list(dict.fromkeys(hashes))
        held: set[str] = set()
        for i in range(0, len(todo), HELD_QUERY):
            part = todo[i : i + HELD_QUERY]
            held.update(r[0] for r in self._all(f"SELECT DISTINCT hash FROM chunks WHERE hash IN ({','.join('?' * len(part))})", part))
        return held

    def chunk_locations(self, h: str, limit: int = 3) -> list[tuple[str, int, int]]:
        """Local files that held chunk ``h`` when last read: (rel, offset, size)."""
        return [tuple(r) for r in self._all("SELECT rel, offset, size FROM chunks WHERE hash = ? LIMIT ?", (h, limit))]  # type: ignore[misc]

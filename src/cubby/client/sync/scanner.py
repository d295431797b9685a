"""The local tree, read from disk.

A file is hashed again only when its size, mtime or inode differ from the file index; then it
is chunked (FastCDC, names only) on a worker thread, and stat'ed again afterwards: if it changed
while it was read (still being written), it is reported with no hash (unstable) and the planner
leaves it alone until a later scan finds it settled.

A small file is read in one call, and its bytes may be kept (`ScanResult.kept`, within a
`KeepBudget` the caller gives) so that the upload that usually follows the scan of a new file
does not read it again: a first sync of a tree of small files then reads each file once, as
`cubby put` does. Only small files are kept, and only up to the budget's bytes in all.

A symbolic link is never followed: it is a file whose content is its target's text
(`cubby.client.modes`), synced when the target stays inside the folder and otherwise listed
in `ScanResult.outside_links` (what `cubby status` reports) and skipped.
"""

from __future__ import annotations

import io
import os
import queue
import stat as stat_mod
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from cubby.client.localfiles import Stamp, stamp_of
from cubby.client.modes import link_inside, mode_of
from cubby.client.sync.ignore import IgnoreRules
from cubby.client.sync.planner import LocalItem
from cubby.client.sync.state import FileRecord, StateDb
from cubby.core import paths
from cubby.core.chunking import MIN_SIZE, chunk_file, iter_chunks
from cubby.core.hashing import content_hash, sha256_hex
from cubby.errors import InvalidPath


@dataclass
class ScanResult:
    items: list[LocalItem] = field(default_factory=list)
    unsyncable: list[str] = field(default_factory=list)
    """Relative paths whose names cubby cannot store (trailing dot, backslash, ...)."""
    outside_links: list[str] = field(default_factory=list)
    """Relative paths of symbolic links whose targets lie outside the folder (not synced)."""
    hashed: int = 0
    rules: IgnoreRules = field(default_factory=IgnoreRules)
    """The ignore rules the scan applied."""
    stamps: dict[str, Stamp] = field(default_factory=dict)
    """rel -> stat stamp of each file this scan hashed, as it was while being hashed."""
    records: dict[str, FileRecord] = field(default_factory=dict)
    """rel -> the index record of each file this scan hashed (what it wrote to the index), so
    that an upload of it need not read the record back."""
    kept: dict[str, bytes] = field(default_factory=dict)
    """rel -> the bytes of a small file this scan hashed, as they were hashed (`KeepBudget`);
    an upload takes them from here instead of reading the file again."""

    def by_key(self) -> dict[str, LocalItem]:
        return {paths.key(i.path): i for i in self.items}

    def by_rel(self) -> dict[str, LocalItem]:
        return {i.rel: i for i in self.items}


class KeepBudget:
    """How many bytes of small files one scan may keep in memory (`ScanResult.kept`), shared
    by its hashing threads: a file is kept only if its bytes fit in what is left, so the scan
    holds at most ``total`` bytes whatever the order the threads finish in."""

    def __init__(self, total: int, per_file: int) -> None:
        self.left = total
        self.per_file = min(per_file, total)
        """Files up to this size are read in one call, and kept while the budget lasts."""
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if n > self.left:
                return False
            self.left -= n
            return True



def hash_file(path: Path, rel: str, keep: KeepBudget | None = None) -> tuple[FileRecord, Stamp, bytes | None] | None:
    """Chunk a file (a link: its target's text); None if it changed while being read. With
    the record comes the file's stat stamp (`cubby.client.localfiles.stamp_of`) as it was
    read, which lets an upload trust bytes it reads back without hashing them again, and the
    bytes themselves when the file is small and ``keep`` has room for them (else None)."""
    data: bytes | None = None
    try:
        before = os.lstat(path)
        if stat_mod.S_ISLNK(before.st_mode):
            text = os.fsencode(os.readlink(path))
            chunks: tuple[tuple[str, int, int], ...] = ((sha256_hex(text), 0, len(text)),) if text else ()
        elif keep is not None and before.st_size <= keep.per_file:
            with open(path, "rb", buffering=0) as fh:
                data = fh.read(before.st_size + 1)  # one byte more: a file that grew is caught below
            if len(data) <= MIN_SIZE:  # FastCDC never cuts below MIN_SIZE: one chunk, no chunker
                chunks = ((sha256_hex(data), 0, len(data)),) if data else ()
            else:
                chunks = tuple((c.hash, c.offset, c.length) for c in iter_chunks(io.BytesIO(data), with_data=False))
        else:
            chunks = tuple((c.hash, c.offset, c.length) for c in chunk_file(path, with_data=False))
        after = os.lstat(path)
    except OSError:
        return None
    if stamp_of(before) != stamp_of(after) or _stamp(before) != _stamp(after):
        return None
    if sum(c[2] for c in chunks) != after.st_size:
        return None
    if data is not None and not (data and keep is not None and keep.take(len(data))):
        data = None
    return FileRecord(
        rel, after.st_size, after.st_mtime_ns, after.st_ino, content_hash(c[0] for c in chunks), chunks, mode_of(after)
    ), stamp_of(after), data


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    """What says a file is the one indexed: a chmod changes no mtime, so the mode is in it."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, mode_of(st))


Listing = tuple[str, list[tuple[str, os.stat_result, bool]]]
"""A folder's relative path, and (name, lstat, is a folder) of each entry cubby may sync."""


def _list_folders(
    root: str,
    rules: IgnoreRules,
    known: Mapping[str, LocalItem],
    out: queue.SimpleQueue[Listing | BaseException | None],
    stop: threading.Event,
) -> None:
    """Read every folder below ``root`` that is synced, depth first, and hand each listing
    (its entries lstat'ed, ignored folders left out) to `walk`, then None (or the error that
    stopped it). A folder in ``known`` (the previous scan's, under the same rules) is not
    tested against the rules again; any other is tested here, once, and `walk` does not test
    folders.

    Runs on a worker thread: ``scandir`` and ``lstat`` release the GIL, so the kernel's part of
    a scan (most of a pass with nothing changed) overlaps the Python part on the caller's
    thread. The folders descended into are those `walk` yields (not ignored), in its order."""
    try:
        stack = [""]
        is_dir_mode, is_reg, is_link = stat_mod.S_ISDIR, stat_mod.S_ISREG, stat_mod.S_ISLNK
        while stack and not stop.is_set():
            rel_dir = stack.pop()
            try:
                with os.scandir(f"{root}/{rel_dir}" if rel_dir else root) as it:
                    entries = list(it)
            except OSError:
                continue
            listing: list[tuple[str, os.stat_result, bool]] = []
            for e in entries:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir_mode(st.st_mode):
                    rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
                    prev = known.get(rel)
                    if (prev is None or prev.kind != "folder") and rules.ignored(rel, True):
                        continue
                    listing.append((e.name, st, True))
                    stack.append(rel)
                elif is_reg(st.st_mode) or is_link(st.st_mode):
                    listing.append((e.name, st, False))
                # sockets, devices, fifos are not synced
            out.put((rel_dir, listing))
        out.put(None)
    except BaseException as exc:  # handed to the caller's thread, raised there
        out.put(exc)


def walk(
    root: Path, rules: IgnoreRules, previous: ScanResult | None = None, executor: Executor | None = None
) -> Iterable[tuple[str, os.stat_result, str | None, LocalItem | None]]:
    """(relative path, lstat, display path or None when cubby cannot store the name, the
    previous scan's item at that path) of everything below ``root`` that is synced, folders
    before what they hold. The folders are read on ``executor`` (`_list_folders`), or on this
    thread without one.

    An item the previous scan found under the same rules, of the same kind, is neither tested
    against the rules nor named again: both are pure functions of the relative path (and the
    rules), so the answer would be the same. A pass with nothing changed then costs one
    ``lstat`` and a lookup per item."""
    seen_before = previous.by_rel() if previous is not None and previous.rules == rules else {}
    listings: queue.SimpleQueue[Listing | BaseException | None] = queue.SimpleQueue()
    stop = threading.Event()
    if executor is None:
        _list_folders(os.fspath(root), rules, seen_before, listings, stop)
    else:
        executor.submit(_list_folders, os.fspath(root), rules, seen_before, listings, stop)
    displays: dict[str, str | None] = {"": paths.ROOT}  # folder -> its display path, set as it is listed
    try:
        while (got := listings.get()) is not None:
            if isinstance(got, BaseException):
                raise got
            rel_dir, listing = got
            display_dir = displays.pop(rel_dir)
            for name, st, is_dir in listing:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                prev = seen_before.get(rel)
                if prev is not None and (prev.kind == "folder") == is_dir:
                    yield rel, st, prev.path, prev
                    if is_dir:
                        displays[rel] = prev.path
                    continue
                if not is_dir and rules.ignored(rel, False):  # folders were tested by the reader
                    continue
                display: str | None = None
                if display_dir is not None:
                    try:
                        display = paths.child(display_dir, name)
                    except InvalidPath:
                        pass
                yield rel, st, display, None
                if is_dir:
                    displays[rel] = display
    finally:
        stop.set()  # a caller that gave up early: the reader stops at the next folder


def scan(
    root: Path,
    state: StateDb,
    executor: Executor,
    *,
    persist: bool = True,
    previous: ScanResult | None = None,
    keep: KeepBudget | None = None,
) -> ScanResult:
    """Read the tree under ``root``; update the file index (unless ``persist`` is False).

    With ``previous`` (the last scan of the same folder), an item whose stamp and index entry
    make it equal to the previous scan's item is that same object, not a copy: comparing two
    scans (`SyncEngine`'s settled plan) is then mostly identity checks. Small files hashed
    keep their bytes within ``keep`` (`ScanResult.kept`)."""
    rules = IgnoreRules.load(root)
    known = state.file_stamps()
    res = ScanResult(rules=rules)
    items = res.items
    todo: list[tuple[str, str, int]] = []  # (rel, display path, inode)
    matched = 0  # indexed files found (all of them: nothing to drop from the index)
    is_dir_mode, is_link = stat_mod.S_ISDIR, stat_mod.S_ISLNK
    for rel, st, display, prev in walk(root, rules, previous, executor):
        if display is None:
            res.unsyncable.append(rel)
            continue
        if is_dir_mode(st.st_mode):
            if prev is not None and prev.inode == st.st_ino:
                items.append(prev)
            else:
                items.append(LocalItem(display, rel, "folder", None, st.st_ino))
            continue
        if is_link(st.st_mode):
            try:
                target = os.readlink(root / rel)
            except OSError:
                continue  # gone since the listing
            if not link_inside(rel, target):
                res.outside_links.append(rel)
                continue
        known_stamp = known.get(rel)
        if known_stamp is not None:
            matched += 1
            if known_stamp[0] == _stamp(st):
                version = known_stamp[1]
                if prev is not None and prev.hash == version and prev.inode == st.st_ino and prev.size == st.st_size:
                    items.append(prev)
                else:
                    items.append(LocalItem(display, rel, "file", version, st.st_ino, st.st_size))
                continue
        todo.append((rel, display, st.st_ino))
    fresh: list[FileRecord] = []
    for (rel, display, ino), got in zip(todo, executor.map(lambda t: hash_file(root / t[0], t[0], keep), todo)):
        res.hashed += 1
        if got is None:
            items.append(LocalItem(display, rel, "file", None, ino))
        else:
            rec, res.stamps[rel], data = got
            res.records[rel] = rec
            if data is not None:
                res.kept[rel] = data
            fresh.append(rec)
            items.append(LocalItem(display, rel, "file", rec.version, rec.inode, rec.size))
    if persist:
        state.put_files(fresh)
        if matched != len(known):
            seen = {i.rel for i in items if i.kind == "file"}
            state.drop_files(r for r in known if r not in seen)
    return res

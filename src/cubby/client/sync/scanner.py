"""The local tree, read from disk.

A file is hashed again only when its size, mtime or inode differ from the file index; then it
is chunked (FastCDC, names only) on a worker thread, and stat'ed again afterwards: if it changed
while it was read (still being written), it is reported with no hash (unstable) and the planner
leaves it alone until a later scan finds it settled. A later scan that finds it, by one stat,
still being written (`cubby.client.sync.settling.still_written`) does not read it at all: it
reports it changing again, so that a pass run for another file does not read a growing 64 MiB
log whole each time.

A small file is read in one call, and its bytes may be kept (`ScanResult.kept`, within a
`KeepBudget` the caller gives) so that the upload that usually follows the scan of a new file
does not read it again: a first sync of a tree of small files then reads each file once, as
`cubby put` does. Only small files are kept, and only up to the budget's bytes in all.

A symbolic link is never followed: it is a file whose content is its target's text
(`cubby.client.modes`), synced when the target stays inside the folder and otherwise listed
in `ScanResult.outside_links` (what `cubby status` reports) and skipped.

What cannot be read is not gone. A file that cannot be opened (its permissions) is an item
with no hash, which the planner leaves alone, as it does a file still being written; a folder
that cannot be listed is in `ScanResult.blind`, and the engine hides everything below it from
the planner, on both sides: its contents are unknown, and an unknown folder read as an empty
one would have its files deleted from the server and from every other device. Both are in
`ScanResult.unreadable`, which `cubby sync` and `cubby status` report until they can be read.
"""

from __future__ import annotations

import hashlib
import io
import marshal
import os
import queue
import stat as stat_mod
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from operator import attrgetter, methodcaller
from pathlib import Path
from typing import Any, cast

from cubby.client.localfiles import Stamp, stamp_of
from cubby.client.modes import link_inside, mode_of
from cubby.client.sync.ignore import IgnoreRules
from cubby.client.sync.planner import LocalItem
from cubby.client.sync.settling import Fields, still_written
from cubby.client.sync.state import FileRecord, StateDb
from cubby.core import paths
from cubby.core.chunking import MIN_SIZE, chunk_file, iter_chunks
from cubby.core.hashing import content_hash, sha256_hex
from cubby.errors import InvalidPath


@dataclass(frozen=True)
class Unreadable:
    """A file or folder the scan could not read, and why (``reason``: the system's words)."""

    rel: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.rel, "reason": self.reason}


def unreadable_because(exc: OSError) -> str:
    return exc.strerror or str(exc)


@dataclass
class ScanResult:
    items: list[LocalItem] = field(default_factory=list)
    unsyncable: list[str] = field(default_factory=list)
    """Relative paths whose names cubby cannot store (trailing dot, backslash, ...)."""
    outside_links: list[str] = field(default_factory=list)
    """Relative paths of symbolic links whose targets lie outside the folder (not synced)."""
    unreadable: list[Unreadable] = field(default_factory=list)
    """Files that could not be opened and folders that could not be listed (see the module)."""
    blind: list[str] = field(default_factory=list)
    """Display paths of the folders that could not be listed: what is below them is unknown."""
    changing: list[str] = field(default_factory=list)
    """Relative paths of files that changed while they were read (still being written, or moved
    or removed meanwhile), or that the previous scan found so and are still being written
    (not read again: `still_written`): left alone, without a version, until a scan reads one
    whole. Until then the pass has not synced them, and says so."""
    changing_seen: dict[str, Fields] = field(default_factory=dict)
    """rel -> the stat fields (`_stamp`) of each file of ``changing`` as last seen (after the
    read that found it changing, or when it was not read): what the next scan compares with."""
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
    folders: dict[str, FolderScan] = field(default_factory=dict)
    """Relative path -> the folders read whole from the file index (`FolderScan`): what the
    next scan may take again while the index is unchanged (``generation``)."""
    loose: list[LocalItem] = field(default_factory=list)
    """The items outside ``folders``."""
    generation: tuple[int, int] | None = None
    """`StateDb.generation` once this scan's index updates were written."""
    listing_digest: str | None = None
    """SHA-256 of every folder's `folder_digest`, in walk order (None: some folder was listed
    without its signature). Equal digests under equal rules are equal listings of the tree:
    the same names with the same stat fields (`Signature`), so with an unchanged file index
    and nothing hashed, equal items (`SyncEngine`'s settled listing)."""

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



Hashed = tuple[FileRecord, Stamp, bytes | None]
"""What `hash_file` makes of a file that stood still while it was read."""


@dataclass(frozen=True)
class Unstable:
    """What `hash_file` makes of a file that changed while it was read, or went."""

    seen: Fields | None
    """Its stat fields (`_stamp`) after the read; None when it went."""


@dataclass(frozen=True)
class CannotRead:
    """What `hash_file` makes of a file it could not open or read (not one that is gone)."""

    reason: str


def hash_file(path: str | Path, rel: str, keep: KeepBudget | None = None) -> Hashed | CannotRead | Unstable:
    """Chunk a file (a link: its target's text); `Unstable` if it changed or went while being
    read, `CannotRead` if it could not be read (its permissions, an I/O error). With
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
    except FileNotFoundError:
        return Unstable(None)
    except OSError as exc:
        return CannotRead(unreadable_because(exc))
    if stamp_of(before) != stamp_of(after) or _stamp(before) != _stamp(after) or sum(c[2] for c in chunks) != after.st_size:
        return Unstable(_stamp(after))
    if data is not None and not (data and keep is not None and keep.take(len(data))):
        data = None
    return FileRecord(
        rel, after.st_size, after.st_mtime_ns, after.st_ino, content_hash(c[0] for c in chunks), chunks, mode_of(after)
    ), stamp_of(after), data


HASH_TASK = 64
"""Files hashed per task on the scan's workers. One task per file cost more in futures than a
small file's hashing (on a first sync of 20,000 files, a sixth of the scan). Tasks start as
the walk finds their files, so hashing overlaps the walk."""


def _hash_part(root: Path, part: list[tuple[str, str, int]], keep: KeepBudget | None) -> list[Hashed | CannotRead | Unstable]:
    """`hash_file` of each of ``part`` (relative path first), in order. (Paths as strings: a
    `Path` per file cost more than a small file's hashing does in Python.)"""
    top = os.fspath(root)
    return [hash_file(f"{top}/{rel}", rel, keep) for rel, _, _ in part]


def _below_any(rel: str, folders: list[str]) -> bool:
    """Is ``rel`` inside one of ``folders`` (relative paths; "" is the whole tree)?"""
    return any(not f or rel.startswith(f + "/") for f in folders)


def _stamp(st: os.stat_result) -> Fields:
    """What says a file is the one indexed: a chmod changes no mtime, so the mode is in it."""
    return (st.st_size, st.st_mtime_ns, st.st_ino, mode_of(st))


Listed = tuple[str, os.stat_result, bool]
"""(name, lstat, is a folder) of an entry of a folder that cubby may sync."""

Signature = tuple[list[str], list[tuple[int, int, int, int]]]
"""The name, and (st_mode, st_ino, st_size, st_mtime_ns), of every entry of a folder, as
listed: equal signatures under equal rules and an unchanged file index scan to equal items."""

_lstat = methodcaller("stat", follow_symlinks=False)
_name = attrgetter("name")
_fields = attrgetter("st_mode", "st_ino", "st_size", "st_mtime_ns")


@dataclass
class FolderScan:
    """What a scan made of one folder that it read whole from the file index (nothing hashed,
    unstable, unstorable or linking outside): kept in `ScanResult.folders` so that the next
    scan, finding the same `Signature` under the same rules and index, takes these items as
    they are instead of naming, testing and comparing each entry again."""

    signature: Signature
    digest: bytes
    """`folder_digest` of the folder as listed then."""
    items: list[LocalItem]
    """The folder's items (not those of its subfolders), in listing order."""
    subfolders: list[tuple[str, str]]
    """(relative path, display path) of each subfolder the walk descends into, in listing order."""
    descend: list[str]
    """The relative paths of ``subfolders``."""
    matched: int
    """Files of the index among ``items``."""


Listing = tuple[str, list[Listed], Signature | None, bytes | None]
"""A folder's relative path, its entries cubby may sync, and its signature and
`folder_digest` (when taken)."""

Reused = tuple[str, FolderScan]
"""A folder whose signature is its previous scan's: that scan's result for it."""

Read = Listing | Reused | Unreadable
"""What the reader hands over for each folder: its listing, its previous scan, or why it could
not be listed (an `Unreadable`, whose ``rel`` is the folder's)."""


def _list_folders(
    root: str,
    rules: IgnoreRules,
    known: Mapping[str, LocalItem],
    out: queue.SimpleQueue[Read | BaseException | None],
    stop: threading.Event,
    reuse: Mapping[str, FolderScan],
    keep: bool,
) -> None:
    """Read every folder below ``root`` that is synced, depth first, and hand each listing
    (its entries lstat'ed, ignored folders left out, with its signature) to the caller, then
    None (or the error that stopped it). A folder in ``known`` (the previous scan's, under the
    same rules) is not tested against the rules again; any other is tested here, once, and
    the caller does not test folders. A folder whose signature is that of its `FolderScan` in
    ``reuse`` is handed over as that (its subfolders descended into as then), not listed.
    Signatures are taken only when ``keep`` (the caller keeps folders for the next scan).

    Runs on a worker thread for a process's first scan: ``scandir`` and ``lstat`` release the
    GIL, so the kernel's part of the scan overlaps the Python part (and the hashing) on the
    caller's thread; later scans run it on the caller's thread first (`scan`). The folders
    descended into are those not ignored, in the walk's order."""
    try:
        stack = [""]
        is_dir_mode, is_reg, is_link = stat_mod.S_ISDIR, stat_mod.S_ISREG, stat_mod.S_ISLNK
        while stack and not stop.is_set():
            rel_dir = stack.pop()
            try:
                with os.scandir(f"{root}/{rel_dir}" if rel_dir else root) as it:
                    entries = list(it)
            except OSError as exc:
                if rel_dir and isinstance(exc, (FileNotFoundError, NotADirectoryError)):
                    continue  # gone since its parent was listed: as if listed after
                # there (or the folder itself), its contents unknown: not the same as empty
                out.put(Unreadable(rel_dir, unreadable_because(exc)))
                continue
            try:  # one loop in C per list: this is the whole of a pass with nothing changed
                stats: list[os.stat_result] = list(map(_lstat, entries))
            except OSError:  # an entry gone since the listing: left out, as if listed after
                entries, stats = _stat_each(entries)
            names: list[str] = list(map(_name, entries))
            fields: list[tuple[int, int, int, int]] = list(map(_fields, stats)) if keep else []
            signature: Signature | None = (names, fields) if keep else None
            before = reuse.get(rel_dir)
            if before is not None and before.signature == signature:
                stack.extend(before.descend)
                out.put((rel_dir, before))
                continue
            listing: list[Listed] = []
            subfolders: list[str] = []
            left_out: list[int] = []
            for at, (name, st) in enumerate(zip(names, stats)):
                if is_dir_mode(st.st_mode):
                    rel = f"{rel_dir}/{name}" if rel_dir else name
                    prev = known.get(rel)
                    if (prev is None or prev.kind != "folder") and rules.ignored(rel, True):
                        left_out.append(at)
                        continue
                    listing.append((name, st, True))
                    subfolders.append(rel)
                elif is_reg(st.st_mode) or is_link(st.st_mode):
                    listing.append((name, st, False))
                # sockets, devices, fifos are not synced
            stack.extend(subfolders)
            out.put((rel_dir, listing, signature, folder_digest(rel_dir, names, fields, left_out) if keep else None))
        out.put(None)
    except BaseException as exc:  # handed to the caller's thread, raised there
        out.put(exc)


def folder_digest(rel_dir: str, names: list[str], fields: list[tuple[int, int, int, int]], left_out: list[int]) -> bytes:
    """SHA-256 of a folder's `Signature`, but for the ignored folders in it (``left_out``,
    their indexes): what `ScanResult.listing_digest` is made of. (An ignored folder changes
    nothing the scan finds, and the state folder, which the client writes to, is one.)"""
    if left_out:
        skip = set(left_out)
        names = [n for i, n in enumerate(names) if i not in skip]
        fields = [f for i, f in enumerate(fields) if i not in skip]
    return hashlib.sha256(marshal.dumps((rel_dir, names, fields))).digest()


@dataclass
class TreeListing:
    """Every folder of a tree as a scan's reader lists it (signatures taken), in walk order,
    and their `ScanResult.listing_digest`: what a new process compares with the listing its
    last settled plan was made from before it scans (`SyncEngine`), and what the scan that
    follows, when there is one, takes instead of listing the tree again."""

    rules: IgnoreRules
    folders: list[Listing | Unreadable]
    digest: str


def list_tree(root: Path, rules: IgnoreRules) -> TreeListing:
    """List every folder of the tree under ``root`` that is synced, on this thread: the
    listing alone, with nothing to overlap it with, costs a third less CPU here than handed
    over from a worker thread folder by folder."""
    out: queue.SimpleQueue[Read | BaseException | None] = queue.SimpleQueue()
    _list_folders(os.fspath(root), rules, {}, out, threading.Event(), {}, True)
    folders = [cast("Listing | Unreadable", got) for got in _drain(out)]
    h = hashlib.sha256()
    for f in folders:
        # (a folder that could not be listed: a digest no settled listing has, see `Unreadable`)
        h.update(b"\0unreadable\0" + os.fsencode(f.rel) if isinstance(f, Unreadable) else cast(bytes, f[3]))
    return TreeListing(rules, folders, h.hexdigest())


def _stat_each(entries: list[os.DirEntry[str]]) -> tuple[list[os.DirEntry[str]], list[os.stat_result]]:
    """The entries that can still be lstat'ed, and their lstats."""
    kept, stats = [], []
    for e in entries:
        try:
            stats.append(e.stat(follow_symlinks=False))
        except OSError:
            continue
        kept.append(e)
    return kept, stats


def _folders(
    root: Path, rules: IgnoreRules, seen_before: Mapping[str, LocalItem], reuse: Mapping[str, FolderScan],
    executor: Executor | None, stop: threading.Event, keep: bool = False,
) -> Iterator[Read]:
    """Start `_list_folders` on ``executor`` (or run it on this thread without one) now, and
    give its listings as an iterator. Setting ``stop`` makes the reader stop at its next
    folder (a caller that gives up early)."""
    listings: queue.SimpleQueue[Read | BaseException | None] = queue.SimpleQueue()
    if executor is None:
        _list_folders(os.fspath(root), rules, seen_before, listings, stop, reuse, keep)
    else:
        executor.submit(_list_folders, os.fspath(root), rules, seen_before, listings, stop, reuse, keep)
    return _drain(listings)


def _drain(listings: queue.SimpleQueue[Read | BaseException | None]) -> Iterator[Read]:
    while (got := listings.get()) is not None:
        if isinstance(got, BaseException):
            raise got
        yield got


def _named(
    rel_dir: str, display_dir: str | None, listing: list[Listed], rules: IgnoreRules, seen_before: Mapping[str, LocalItem]
) -> Iterator[tuple[str, os.stat_result, str | None, LocalItem | None]]:
    """`walk`'s items of one listed folder (see there)."""
    for name, st, is_dir in listing:
        rel = f"{rel_dir}/{name}" if rel_dir else name
        prev = seen_before.get(rel)
        if prev is not None and (prev.kind == "folder") == is_dir:
            yield rel, st, prev.path, prev
            continue
        if not is_dir and rules.ignored_file(rel_dir, name):  # folders were tested by the reader
            continue
        display: str | None = None
        if display_dir is not None:
            try:
                display = paths.child(display_dir, name)
            except InvalidPath:
                pass
        yield rel, st, display, None


def _seen_before(rules: IgnoreRules, previous: ScanResult | None, reuse: Mapping[str, FolderScan] | None = None) -> dict[str, LocalItem]:
    """The previous scan's items by relative path, when it was made under ``rules``; with
    ``reuse`` (its folders, taken whole when unchanged), only its items outside them: a
    folder of ``reuse`` that changed has its own items looked up (`_scan`)."""
    if previous is None or previous.rules != rules:
        return {}
    return {i.rel: i for i in previous.loose} if reuse else previous.by_rel()


def walk(
    root: Path, rules: IgnoreRules, previous: ScanResult | None = None, executor: Executor | None = None
) -> Iterable[tuple[str, os.stat_result, str | None, LocalItem | None]]:
    """(relative path, lstat, display path or None when cubby cannot store the name, the
    previous scan's item at that path) of everything below ``root`` that is synced, folders
    before what they hold. The folders are read on ``executor`` (`_list_folders`), or on this
    thread without one.

    An item the previous scan found under the same rules, of the same kind, is neither tested
    against the rules nor named again: both are pure functions of the relative path (and the
    rules), so the answer would be the same."""
    seen_before = _seen_before(rules, previous)
    displays: dict[str, str | None] = {"": paths.ROOT}  # folder -> its display path, set as it is listed
    stop = threading.Event()
    try:
        for got in _folders(root, rules, seen_before, {}, executor, stop):
            if isinstance(got, Unreadable):
                continue  # nothing below it is known
            rel_dir, listing, _, _ = cast("Listing", got)
            for rel, st, display, prev in _named(rel_dir, displays.pop(rel_dir), listing, rules, seen_before):
                yield rel, st, display, prev
                if stat_mod.S_ISDIR(st.st_mode):
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
    on_new: Callable[[str, FileRecord, bytes], None] | None = None,
    listed: TreeListing | None = None,
    keep_folders: bool = False,
) -> ScanResult:
    """Read the tree under ``root``; update the file index (unless ``persist`` is False).

    With ``previous`` (the last scan of the same folder), an item whose stamp and index entry
    make it equal to the previous scan's item is that same object, not a copy: comparing two
    scans (`SyncEngine`'s settled plan) is then mostly identity checks. And while the rules
    and the file index (`StateDb.generation`) are those of ``previous``, a folder whose
    `Signature` is the one ``previous`` read whole from the index (`FolderScan`) is its items
    then, taken in one step: a pass with nothing changed costs one ``lstat`` per item and a
    comparison per folder, and names, tests and compares nothing per item. (The signature
    holds every field the index compares, the raw mode, and every entry's name, so any edit,
    chmod, addition, removal or replacement in the folder makes it read the folder again.)
    A file ``previous`` found changing that one stat shows still being written is not read
    (`still_written`): it is changing again. Small files hashed keep their bytes within
    ``keep`` (`ScanResult.kept`). ``on_new`` is
    told of each file the index did not know whose bytes were kept, as soon as it is hashed
    (on this thread, in walk order): `cubby.client.sync.presend` sends their chunks while the
    scan goes on. ``listed`` is the tree as `list_tree` just listed it, taken instead of
    listing it again when nothing before this scan is to be reused (a process's first).

    Every folder's signature is taken, and the scan's `ScanResult.listing_digest` made of
    them; the folders themselves are kept (`ScanResult.folders`) only from a process's second
    scan on, or with ``keep_folders`` (a scan of a running client's second pass, whose first
    took the settled listing and scanned nothing)."""
    rules = IgnoreRules.load(root)
    reuse = previous.folders if previous is not None and previous.rules == rules and previous.generation == state.generation() else {}
    seen_before = _seen_before(rules, previous, reuse)
    stop = threading.Event()
    try:
        # (the index is read before the reader starts: read while it lists, measured slower, as
        # building the rows holds the GIL the reader needs)
        known = state.file_stamps()
        # a process's first scan (nothing before it) keeps no folders: `cubby sync --once` runs one
        # pass and would never use them; its next scan keeps them
        after_another = previous is not None and bool(previous.items)
        keep_folders = keep_folders or after_another
        if listed is not None and listed.rules == rules and not seen_before and not reuse:
            folders: Iterator[Read] = iter(listed.folders)
        else:
            # A scan after another lists on this thread: with most items known, little is left
            # to overlap with, and a listing handed over folder by folder cost more CPU (and,
            # with the GIL, more time) than the overlap gained. A process's first scan, which
            # may hash a whole tree (a first sync), lists on a worker while the hashing starts.
            folders = _folders(root, rules, seen_before, reuse, None if after_another else executor, stop, keep=True)
        was_changing = previous.changing_seen if previous is not None else {}
        return _scan(
            root, state, executor, rules, folders, known, seen_before, reuse, persist, keep, on_new, keep_folders, was_changing
        )
    finally:
        stop.set()


class _Taken:
    """The hashed files of one scan, taken from its hashing tasks in walk order as they finish:
    while the walk still goes on (`take` without ``wait``), so that a first sync's presend
    (``on_new``) gives the server its first groups while the rest of the tree is listed and
    hashed, instead of after the whole walk; the items are added to the scan's at the end, in
    the order a scan that waited for every task would give."""

    def __init__(
        self, res: ScanResult, known: Mapping[str, object], on_new: Callable[[str, FileRecord, bytes], None] | None
    ) -> None:
        self.res, self.known, self.on_new = res, known, on_new
        self.items: list[LocalItem] = []
        self.fresh: list[FileRecord] = []
        """The records to write to the file index."""
        self.tasks = 0
        """Hashing tasks taken so far (from the first)."""
        self.at = 0
        """Files of the scan's ``todo`` taken so far."""

    def take(
        self, todo: list[tuple[str, str, int]], hashing: list[Future[list[Hashed | CannotRead | Unstable]]], *, wait: bool
    ) -> None:
        """Take the tasks not yet taken, in order: all of them (``wait``), or those done."""
        res = self.res
        while self.tasks < len(hashing) and (wait or hashing[self.tasks].done()):
            part = hashing[self.tasks].result()
            for (rel, display, ino), got in zip(todo[self.at : self.at + len(part)], part, strict=True):
                res.hashed += 1
                if isinstance(got, (Unstable, CannotRead)):  # left alone
                    if isinstance(got, CannotRead):
                        res.unreadable.append(Unreadable(rel, got.reason))
                    else:
                        res.changing.append(rel)
                        if got.seen is not None:
                            res.changing_seen[rel] = got.seen
                    self.items.append(LocalItem(display, rel, "file", None, ino))
                    continue
                rec, res.stamps[rel], data = got
                res.records[rel] = rec
                if data is not None:
                    res.kept[rel] = data
                    if self.on_new is not None and rel not in self.known:
                        self.on_new(rel, rec, data)
                self.fresh.append(rec)
                self.items.append(LocalItem(display, rel, "file", rec.version, rec.inode, rec.size))
            self.at += len(part)
            self.tasks += 1


def _scan(
    root: Path, state: StateDb, executor: Executor, rules: IgnoreRules, folders: Iterator[Read],
    known: Mapping[str, tuple[tuple[int, int, int, int], str | None]], seen_before: Mapping[str, LocalItem],
    reuse: Mapping[str, FolderScan], persist: bool, keep: KeepBudget | None,
    on_new: Callable[[str, FileRecord, bytes], None] | None, keep_folders: bool, was_changing: Mapping[str, Fields],
) -> ScanResult:
    """`scan`'s work, once its reader is started and the file index read. ``was_changing``:
    the previous scan's `ScanResult.changing_seen`."""
    res = ScanResult(rules=rules)
    items = res.items
    todo: list[tuple[str, str, int]] = []  # (rel, display path, inode)
    hashing: list[Future[list[Hashed | CannotRead | Unstable]]] = []  # `_hash_part` of each HASH_TASK of todo
    queued = 0  # files of todo given to hashing
    taken = _Taken(res, known, on_new)
    matched = 0  # indexed files found (all of them: nothing to drop from the index)
    is_dir_mode, is_link = stat_mod.S_ISDIR, stat_mod.S_ISLNK
    displays: dict[str, str | None] = {"": paths.ROOT}  # folder -> its display path, set as it is listed
    listing_digest: Any = hashlib.sha256()  # None once a folder comes without its digest
    unlisted: list[str] = []  # relative paths of the folders that could not be listed
    for folder in folders:
        if isinstance(folder, Unreadable):  # listed in its parent, its own contents unknown
            display_of = displays.pop(folder.rel, None)
            res.unreadable.append(folder)
            unlisted.append(folder.rel)
            if display_of is not None:
                res.blind.append(display_of)
            listing_digest = None  # no settled listing stands for a tree with a part unknown
            continue
        if len(folder) == 2:  # a folder as it was: its items, as they were
            rel_dir, before = cast("Reused", folder)
            if listing_digest is not None:
                listing_digest.update(before.digest)
            del displays[rel_dir]
            items.extend(before.items)
            displays.update(before.subfolders)
            matched += before.matched
            res.folders[rel_dir] = before
            continue
        rel_dir, listing, signature, digest = cast("Listing", folder)
        if digest is None:
            listing_digest = None
        elif listing_digest is not None:
            listing_digest.update(digest)
        first, clean, matched_here = len(items), True, 0
        changed = reuse.get(rel_dir)  # a folder taken whole before: its items are not in seen_before
        lookup = seen_before if changed is None else {i.rel: i for i in changed.items}
        subfolders: list[tuple[str, str]] = []
        for rel, st, display, prev in _named(rel_dir, displays.pop(rel_dir), listing, rules, lookup):
            if is_dir_mode(st.st_mode):
                displays[rel] = display
                if display is None:
                    res.unsyncable.append(rel)
                    clean = False
                    continue
                subfolders.append((rel, display))
                if prev is not None and prev.inode == st.st_ino:
                    items.append(prev)
                else:
                    items.append(LocalItem(display, rel, "folder", None, st.st_ino))
                continue
            if display is None:
                res.unsyncable.append(rel)
                clean = False
                continue
            if is_link(st.st_mode):
                try:
                    target = os.readlink(root / rel)
                except OSError:
                    clean = False
                    continue  # gone since the listing
                if not link_inside(rel, target):
                    res.outside_links.append(rel)
                    clean = False
                    continue
            known_stamp = known.get(rel)
            if known_stamp is not None:
                matched_here += 1
                if known_stamp[0] == _stamp(st):
                    version = known_stamp[1]
                    if prev is not None and prev.hash == version and prev.inode == st.st_ino and prev.size == st.st_size:
                        items.append(prev)
                    else:
                        items.append(LocalItem(display, rel, "file", version, st.st_ino, st.st_size))
                    continue
            last = was_changing.get(rel) if was_changing else None
            if last is not None and still_written(fields := _stamp(st), last, time.time_ns()):
                res.changing.append(rel)  # as if read and found changing, without the read
                res.changing_seen[rel] = fields
                items.append(LocalItem(display, rel, "file", None, st.st_ino))
                clean = False
                continue
            todo.append((rel, display, st.st_ino))
            if len(todo) - queued >= HASH_TASK:  # hashed while the walk goes on
                hashing.append(executor.submit(_hash_part, root, todo[queued:], keep))
                queued = len(todo)
                taken.take(todo, hashing, wait=False)  # those done so far: presend starts now
            clean = False
        matched += matched_here
        if signature is None or digest is None or not keep_folders:
            continue  # no folders kept: nothing is looked up in ``loose`` either
        if clean:
            res.folders[rel_dir] = FolderScan(signature, digest, items[first:], subfolders, [r for r, _ in subfolders], matched_here)
        else:
            res.loose.extend(items[first:])
    if queued < len(todo):
        hashing.append(executor.submit(_hash_part, root, todo[queued:], keep))
    taken.take(todo, hashing, wait=True)
    items.extend(taken.items)
    res.loose.extend(taken.items)
    if persist:
        state.put_files(taken.fresh)
        if matched != len(known):
            seen = {i.rel for i in items if i.kind == "file"}
            # (files below a folder that could not be listed are unknown, not gone: kept)
            state.drop_files(r for r in known if r not in seen and not _below_any(r, unlisted))
    res.generation = state.generation()
    res.listing_digest = listing_digest.hexdigest() if listing_digest is not None else None
    return res

"""The local tree, read from disk.

A file is hashed again only when its size, mtime or inode differ from the file index; then it
is chunked (FastCDC, names only, nothing kept in memory) on a worker thread, and stat'ed again
afterwards: if it changed while it was read (still being written), it is reported with no hash
(unstable) and the planner leaves it alone until a later scan finds it settled.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Iterable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from cubby.client.sync.ignore import IgnoreRules
from cubby.client.sync.planner import LocalItem
from cubby.client.sync.state import FileRecord, StateDb
from cubby.core import paths
from cubby.core.chunking import chunk_file
from cubby.core.hashing import content_hash
from cubby.errors import InvalidPath


@dataclass
class ScanResult:
    items: list[LocalItem] = field(default_factory=list)
    unsyncable: list[str] = field(default_factory=list)
    """Relative paths whose names cubby cannot store (trailing dot, backslash, ...)."""
    hashed: int = 0

    def by_key(self) -> dict[str, LocalItem]:
        return {paths.key(i.path): i for i in self.items}


def hash_file(path: Path, rel: str) -> FileRecord | None:
    """Chunk a file; None if it changed while being read."""
    try:
        before = path.stat()
        chunks = tuple((c.hash, c.offset, c.length) for c in chunk_file(path, with_data=False))
        after = path.stat()
    except OSError:
        return None
    if (before.st_size, before.st_mtime_ns, before.st_ino) != (after.st_size, after.st_mtime_ns, after.st_ino):
        return None
    if sum(c[2] for c in chunks) != after.st_size:
        return None
    return FileRecord(rel, after.st_size, after.st_mtime_ns, after.st_ino, content_hash(c[0] for c in chunks), chunks)


def _walk(root: Path, rules: IgnoreRules) -> Iterable[tuple[str, os.stat_result]]:
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(root / rel_dir if rel_dir else root) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            is_dir = stat_mod.S_ISDIR(st.st_mode)
            if not is_dir and not stat_mod.S_ISREG(st.st_mode):
                continue  # symlinks, sockets, devices are not synced
            if rules.ignored(rel, is_dir):
                continue
            yield rel, st
            if is_dir:
                stack.append(rel)


def scan(root: Path, state: StateDb, executor: Executor, *, persist: bool = True) -> ScanResult:
    """Read the tree under ``root``; update the file index (unless ``persist`` is False)."""
    rules = IgnoreRules.load(root)
    known = state.files()
    res = ScanResult()
    todo: list[tuple[str, str, int]] = []  # (rel, display path, inode)
    seen: set[str] = set()
    for rel, st in _walk(root, rules):
        try:
            display = paths.normalize("/" + rel)
        except InvalidPath:
            res.unsyncable.append(rel)
            continue
        if stat_mod.S_ISDIR(st.st_mode):
            res.items.append(LocalItem(display, rel, "folder", None, st.st_ino))
            continue
        seen.add(rel)
        rec = known.get(rel)
        if rec is not None and (rec.size, rec.mtime_ns, rec.inode) == (st.st_size, st.st_mtime_ns, st.st_ino):
            res.items.append(LocalItem(display, rel, "file", rec.hash, rec.inode, rec.size))
        else:
            todo.append((rel, display, st.st_ino))
    fresh: list[FileRecord] = []
    for (rel, display, ino), rec in zip(todo, executor.map(lambda t: hash_file(root / t[0], t[0]), todo)):
        res.hashed += 1
        if rec is None:
            res.items.append(LocalItem(display, rel, "file", None, ino))
        else:
            fresh.append(rec)
            res.items.append(LocalItem(display, rel, "file", rec.hash, rec.inode, rec.size))
    if persist:
        state.put_files(fresh)
        state.drop_files(r for r in known if r not in seen)
    return res

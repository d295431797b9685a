"""The sync engine's side of downloads: fetch planned downloads' chunk lists in batches, take
each chunk from the disk, the cache or the server (as a delta against an old chunk when one
is held), stage the files under ``.cubby/tmp`` and rename them into place when whole.

A file is renamed into place only after checking that the file it replaces is still the one
the plan saw (`_may_replace`), so an edit made while sync runs is never overwritten. Kept
apart from `cubby.client.download` (`cubby get`) because this side reuses local chunks and
records what it wrote in the state database.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from cubby.client import modes
from cubby.client.download import DELTA_MIN, verified_prefix
from cubby.client.pipeline import Pipeline
from cubby.client.sync import planner as P
from cubby.client.sync.base import EngineCore, Failures
from cubby.client.sync.state import FileRecord
from cubby.client.sync.trust import Resolved, UnsafePath
from cubby.client.windows import BATCH, DOWNLOAD_WINDOW, STAGE_IN_FLIGHT
from cubby.core import delta, durable
from cubby.core.hashing import sha256_hex
from cubby.errors import BadRequest, CubbyError
from cubby.model import ChunkRef, Entry

Ready = tuple[P.Download, list[ChunkRef], Entry]
"""A planned download with its chunk list and the entry the list belongs to."""


@dataclass
class Staged:
    """A batch written to temp files: (download, entry, temp path, the temp file's stat, chunk
    list) per file, and what failed on the way."""

    files: list[tuple[P.Download, Entry, str, os.stat_result, list[ChunkRef]]] = field(default_factory=list)
    failures: Failures = field(default_factory=list)


def _finish(fd: int, entry: Entry) -> os.stat_result:
    """Give a written temp file its mode (`modes.apply_mode`) and mtime; its stat."""
    if entry.mode == modes.EXECUTABLE:  # a new temp file has no execute bits to take away
        modes.apply_mode(fd, entry.mode)
    if entry.mtime:
        os.utime(fd, (entry.mtime, entry.mtime))
    return os.fstat(fd)


Landed = tuple[P.Download, Entry, os.stat_result, list[ChunkRef], str]
"""A file renamed into place: (download, entry, the temp file's stat, chunk list, rel)."""


class Downloads:
    """Planned downloads, fetched in batches (see the module docstring)."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core

    def download(
        self, ops: Sequence[P.Download], failures: Failures, made_durable: Callable[[], None] | None = None
    ) -> int:
        """Fetch many files: their chunk lists a thousand at a time, then their chunks from the
        local disk, the cache, or the server (in bounded batches), into temp files that are
        renamed into place when whole.

        Pipelined: the next thousand chunk lists are asked for while this batch is fetched,
        and batches of small files are fetched and written to their temp files on worker
        threads (`STAGE_IN_FLIGHT` at once) while the one before them is made durable, renamed
        into place and recorded on this thread (at most `STAGE_IN_FLIGHT` + 1 batches, each
        about a `DOWNLOAD_WINDOW` of bytes, in memory). A file larger than a window streams
        alone.

        Each batch's barrier does two jobs (`_land`): it makes the batch's temp files durable
        before they are renamed, and the renames of the batch before it durable before those
        files are recorded; one more barrier after the last batch covers its renames. So a
        file is still recorded only after a barrier found it in place, for one barrier per
        batch instead of two.

        ``made_durable`` is called (on this thread) once a barrier has made durable everything
        written before this call: the first batch's, or one at the end if no batch came. The
        folders made for these files are recorded so, without a barrier of their own that
        held up the first batch."""
        self._made_durable = made_durable
        self._renamed = []
        done = 0
        with Pipeline(STAGE_IN_FLIGHT) as stager:
            for batch in self._batches(ops):
                if len(batch) == 1 and batch[0][2].size > DOWNLOAD_WINDOW:
                    for staged in stager.drain():
                        done += self._land(staged, failures)
                    done += self._land(self._stage_large(batch[0], failures), failures)
                    continue
                for staged in stager.submit(lambda batch=batch: self._stage_small(batch)):  # type: ignore[misc]
                    done += self._land(staged, failures)
            for staged in stager.drain():
                done += self._land(staged, failures)
        if self._renamed or self._made_durable is not None:
            self._barrier()
            done += self._record(self._renamed)
            self._renamed = []
        return done

    _made_durable: Callable[[], None] | None = None
    _renamed: list[Landed]
    """The last batch's files renamed into place, not yet covered by a barrier (`_land`)."""

    def _barrier(self) -> None:
        """One barrier for the folder (`durable.barrier`), then what waited for the first."""
        durable.barrier(self.core.root)
        waiting, self._made_durable = self._made_durable, None
        if waiting is not None:
            waiting()

    def _batches(self, ops: Sequence[P.Download]) -> Iterator[list[Ready]]:
        """Planned downloads with their chunk lists, in batches of about `DOWNLOAD_WINDOW`
        bytes (a larger file alone); the next thousand chunk lists are requested on a thread
        while the caller works through this thousand."""
        groups = [list(ops[i : i + BATCH]) for i in range(0, len(ops), BATCH)]
        if not groups:
            return
        with ThreadPoolExecutor(1, thread_name_prefix="cubby-lists") as ahead:
            pending = ahead.submit(self.core.api.blocklists, [o.remote.path for o in groups[0]])
            for n, group in enumerate(groups):
                lists = cast("list[tuple[Entry, list[ChunkRef]] | CubbyError]", pending.result())
                if n + 1 < len(groups):
                    pending = ahead.submit(self.core.api.blocklists, [o.remote.path for o in groups[n + 1]])
                batch: list[Ready] = []
                size = 0
                for op, bl in zip(group, lists, strict=True):
                    if isinstance(bl, CubbyError):
                        continue  # gone since the journal said so: the next round learns it
                    entry, chunks = bl
                    if modes.version(entry.content_hash, entry.mode) != op.remote.hash or entry.node_id != op.remote.node_id:
                        continue
                    if entry.size > DOWNLOAD_WINDOW:
                        yield [(op, chunks, entry)]
                        continue
                    batch.append((op, chunks, entry))
                    size += entry.size
                    if size >= DOWNLOAD_WINDOW:
                        yield batch
                        batch, size = [], 0
                if batch:
                    yield batch

    def _fetch(self, items: list[Ready]) -> list[tuple[ChunkRef, bytes | bytearray]]:
        """Every chunk of a batch of small files, in order (on the fetcher thread)."""
        return list(self._chunks_for([c for _, chunks, _ in items for c in chunks], self._bases(items)))

    def _bases(self, items: list[Ready]) -> dict[str, tuple[str, ...]]:
        bases: dict[str, tuple[str, ...]] = {}
        for op, chunks, entry in items:
            rec = self.core.state.file(op.replace.rel) if op.replace is not None and entry.size >= DELTA_MIN else None
            if rec is not None and rec.mode != modes.SYMLINK:
                bases.update(delta.pick_bases(delta.offsets([(c.hash, c.size) for c in chunks]), rec.chunks))
        return bases

    def _local_chunk(self, h: str, held: Collection[str] | None = None) -> bytes | None:
        """Chunk ``h`` from a local file that holds it, else from the cache; ``held``: the
        hashes the file index knows a local file of (`StateDb.chunks_held`), when the caller
        asked for a window's at once (no index query for the others)."""
        for rel, off, size in self.core.state.chunk_locations(h) if held is None or h in held else ():
            try:
                with open(self.core.abs_path(rel), "rb") as fh:
                    fh.seek(off)
                    data = fh.read(size)
            except OSError:
                continue
            if sha256_hex(data) == h:
                return data
        return self.core.cache.get(h)

    def _chunks_for(
        self, chunks: Sequence[ChunkRef], bases: dict[str, tuple[str, ...]] | None = None
    ) -> Iterator[tuple[ChunkRef, bytes | bytearray]]:
        """Each chunk's bytes in order, looking locally first and fetching the rest from the
        server a bounded window at a time; a chunk with a base (the old chunks at the same place
        in the version being replaced, still on disk) comes as a delta against it."""
        i = 0
        while i < len(chunks):
            window: list[ChunkRef] = []
            size = 0
            while i < len(chunks) and (not window or size + chunks[i].size <= DOWNLOAD_WINDOW):
                window.append(chunks[i])
                size += chunks[i].size
                i += 1
            got: dict[str, bytes | bytearray] = {}
            missing: dict[str, None] = {}  # (a dict: ordered, and a window has thousands)
            indexed = self.core.state.chunks_held(c.hash for c in window)
            for c in window:
                if c.hash in got or c.hash in missing:
                    continue
                data = self._local_chunk(c.hash, indexed)
                if data is None:
                    missing[c.hash] = None
                else:
                    got[c.hash] = data
            pairs: list[tuple[str, tuple[str, ...]]] = []
            held: dict[str, bytes] = {}
            for h in missing:
                for b in (bases or {}).get(h, ()):
                    if b not in held and (data := self._local_chunk(b)) is not None:
                        held[b] = data
                base = tuple(b for b in (bases or {}).get(h, ()) if b in held)  # those still on disk
                if base:
                    pairs.append((h, base))
            if pairs:
                got.update(self.core.api.fetch_against(pairs, held))
            plain = [h for h in missing if h not in got]
            if plain:
                got.update(self.core.api.fetch_chunks(plain))
            for c in window:
                yield c, got[c.hash]

    def _stage_small(self, items: list[Ready]) -> Staged:
        """Fetch a batch of small files and write each to a temp file (on the worker thread):
        not yet durable, not yet in place, not recorded. What failed goes with the result."""
        staged = Staged()
        stream = iter(self._fetch(items))
        tmpdir = os.fspath(self.core.dir / "tmp")
        prefix = uuid.uuid4().hex  # one random name per batch: a killed run's leftovers never clash
        for n, (op, chunks, entry) in enumerate(items):
            tmp = f"{tmpdir}/{prefix}-{n}.part"
            if entry.mode == modes.SYMLINK:
                text = b"".join(next(stream)[1] for _ in chunks)
                try:
                    st = self._stage_link(tmp, op, text)
                except (OSError, ValueError, CubbyError) as exc:
                    staged.failures.append({"op": "Download", "path": op.remote.path, "error": str(exc)})
                    continue
                staged.files.append((op, entry, tmp, st, chunks))
                continue
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                for _ in chunks:
                    durable.write_all(fd, next(stream)[1])
                staged.files.append((op, entry, tmp, _finish(fd, entry), chunks))
            finally:
                os.close(fd)
        return staged

    def _stage_large(self, item: Ready, failures: Failures) -> Staged:
        """Stream one large file into its temp file, named by its content so that a run killed
        halfway keeps what it wrote (`verified_prefix`), and fsync it."""
        op, chunks, entry = item
        tmp = os.fspath(self.core.dir / "tmp" / f"{entry.content_hash}.part")
        keep = verified_prefix(Path(tmp), chunks)
        stream = self._chunks_for(chunks[keep:], self._bases([item]))
        staged = Staged()
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            written = sum(c.size for c in chunks[:keep])
            os.ftruncate(fd, written)
            os.lseek(fd, written, os.SEEK_SET)
            for _ in chunks[keep:]:
                _, data = next(stream)
                durable.write_all(fd, data)
                if (written // DOWNLOAD_WINDOW) != ((written + len(data)) // DOWNLOAD_WINDOW):
                    self.core.emit({"event": "progress", "direction": "down", "path": entry.path, "done": written + len(data), "total": entry.size})
                    self.core.crash_point("download_window")
                written += len(data)
            os.fsync(fd)
            staged.files.append((op, entry, tmp, _finish(fd, entry), chunks))
        finally:
            os.close(fd)
        return staged

    def _land(self, staged: Staged, failures: Failures) -> int:
        """One barrier for a batch: it makes the batch's temp files durable, and the renames
        of the batch before it, whose files are recorded now; then this batch's files are
        renamed into place, each if the file it replaces is unchanged, to be recorded after
        the next barrier (`download`). The state never says a file is synced before its
        bytes and its name would survive a crash; a crash before the record leaves files the
        next plan adopts (both sides agree). Returns how many files were recorded."""
        failures.extend(staged.failures)
        if not staged.files:
            return 0
        self._barrier()
        done = self._record(self._renamed)
        self._renamed = []
        resolved: Resolved = {}  # each folder resolved once for the batch
        made: set[str] = set()
        for op, entry, tmp, st, chunks in staged.files:
            rel = op.replace.rel if op.replace is not None else self.core.rel_for(op.remote.path)
            try:
                target = self.core.abs_path(rel, resolved)
                if not self._may_replace(op, target):
                    os.unlink(tmp)
                    continue
                parent = os.path.dirname(target)
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                if op.replace is not None:
                    rec = self.core.state.file(op.replace.rel)
                    if rec is not None:
                        self.core.keep_chunks(rec)
                os.replace(tmp, target)
            except (OSError, UnsafePath) as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                failures.append({"op": "Download", "path": op.remote.path, "error": str(exc)})
                continue
            self._renamed.append((op, entry, st, chunks, rel))
        self.core.crash_point("download_renamed")
        return done

    def _record(self, landed: list[Landed]) -> int:
        """Record files renamed into place, once a barrier has made the renames durable."""
        if not landed:
            return 0
        records: list[FileRecord] = []
        bases: list[P.BaseItem] = []
        for op, entry, st, chunks, rel in landed:
            offs, o = [], 0
            for c in chunks:
                offs.append((c.hash, o, c.size))
                o += c.size
            # the temp file's stat, taken when it was written: a rename keeps inode, size,
            # mtime and mode, and an edit made since the rename is then never taken as synced
            records.append(FileRecord(rel, st.st_size, st.st_mtime_ns, st.st_ino, entry.content_hash or "", tuple(offs), modes.mode_of(st)))
            bases.append(P.BaseItem(entry.ns_id, entry.node_id, op.remote.path, "file", entry.rev, op.remote.hash, st.st_ino))
        with self.core.state.tx():
            self.core.state.set_bases(bases)
            self.core.state.put_files(records)
        for op, entry, *_ in landed:
            self.core.emit({"op": "Download", "path": op.remote.path, "size": entry.size})
        self.core.crash_point("downloaded")
        return len(landed)

    def _stage_link(self, tmp: str, op: P.Download, text: bytes) -> os.stat_result:
        """Make a downloaded link at ``tmp``: only a link that stays inside the folder, the
        rule the sender's scanner applied (a server or another client could send any text)."""
        rel = op.replace.rel if op.replace is not None else self.core.rel_for(op.remote.path)
        target = os.fsdecode(text)
        if not modes.link_inside(rel, target):
            raise BadRequest(f"{op.remote.path} is a link to {target!r}, outside the folder: not made", code="link_outside")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        if op.remote.mtime:
            os.utime(tmp, (op.remote.mtime, op.remote.mtime), follow_symlinks=False)
        return os.lstat(tmp)

    def _may_replace(self, op: P.Download, target: str | Path) -> bool:
        """Is the local file still what the plan saw? Never overwrite an edit made meanwhile."""
        try:
            s = os.lstat(target)
        except FileNotFoundError:
            return op.replace is None
        if op.replace is None:
            return False
        rec = self.core.state.file(op.replace.rel)
        return rec is not None and rec.version == op.replace.hash and (rec.size, rec.mtime_ns, rec.inode, rec.mode) == (
            s.st_size, s.st_mtime_ns, s.st_ino, modes.mode_of(s)
        )

"""The sync engine's side of downloads: fetch planned downloads' chunk lists in batches, take
each chunk from the disk, the cache or the server (as a delta against an old chunk when one
is held), stage the files under ``.cubby/tmp`` and rename them into place when whole.

A file is renamed into place only after checking that the file it replaces is still the one
the plan saw (`_may_replace`), so an edit made while sync runs is never overwritten. Kept
apart from `cubby.client.download` (`cubby get`) because this side reuses local chunks and
records what it wrote in the state database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

from cubby.client import modes
from cubby.client.download import DELTA_MIN, verified_prefix
from cubby.client.pipeline import Pipeline
from cubby.client.sync import planner as P
from cubby.client.sync.base import EngineCore, Failures
from cubby.client.sync.state import FileRecord
from cubby.client.sync.trust import UnsafePath
from cubby.client.windows import BATCH, DOWNLOAD_WINDOW
from cubby.core import delta, durable
from cubby.core.hashing import sha256_hex
from cubby.errors import BadRequest, CubbyError
from cubby.model import ChunkRef, Entry

Ready = tuple[P.Download, list[ChunkRef], Entry]
"""A planned download with its chunk list and the entry the list belongs to."""


class Downloads:
    """Planned downloads, fetched in batches (see the module docstring)."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core

    def download(self, ops: Sequence[P.Download], failures: Failures) -> int:
        """Fetch many files: their chunk lists a thousand at a time, then their chunks from the
        local disk, the cache, or the server (in bounded batches), into temp files that are
        renamed into place when whole.

        Pipelined: the next thousand chunk lists are asked for while this batch is fetched,
        and a batch of small files is fetched on a worker thread while the one before it is
        written and renamed on this thread (at most two batches, about two
        `DOWNLOAD_WINDOW`s of bytes, in memory). A file larger than a window streams alone."""
        done = 0
        with Pipeline(1) as fetcher:
            for batch in self._batches(ops):
                if len(batch) == 1 and batch[0][2].size > DOWNLOAD_WINDOW:
                    for items, got in fetcher.drain():
                        done += self._download_files(items, failures, got)
                    done += self._download_files(batch, failures)
                    continue
                for items, got in fetcher.submit(lambda batch=batch: (batch, self._fetch(batch))):  # type: ignore[misc]
                    done += self._download_files(items, failures, got)
            for items, got in fetcher.drain():
                done += self._download_files(items, failures, got)
        return done

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

    def _fetch(self, items: list[Ready]) -> list[tuple[ChunkRef, bytes]]:
        """Every chunk of a batch of small files, in order (on the fetcher thread)."""
        return list(self._chunks_for([c for _, chunks, _ in items for c in chunks], self._bases(items)))

    def _bases(self, items: list[Ready]) -> dict[str, tuple[str, ...]]:
        bases: dict[str, tuple[str, ...]] = {}
        for op, chunks, entry in items:
            rec = self.core.state.file(op.replace.rel) if op.replace is not None and entry.size >= DELTA_MIN else None
            if rec is not None and rec.mode != modes.SYMLINK:
                bases.update(delta.pick_bases(delta.offsets([(c.hash, c.size) for c in chunks]), rec.chunks))
        return bases

    def _local_chunk(self, h: str) -> bytes | None:
        for rel, off, size in self.core.state.chunk_locations(h):
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
    ) -> Iterator[tuple[ChunkRef, bytes]]:
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

    def _download_files(self, items: list[Ready], failures: Failures, fetched: list[tuple[ChunkRef, bytes]] | None = None) -> int:
        """Write a batch (its chunks ``fetched`` already, or a large file streamed here), make
        it durable, and rename each file into place if the one it replaces is unchanged."""
        staged: list[tuple[P.Download, Entry, Path, list[ChunkRef]]] = []
        tmpdir = self.core.dir / "tmp"
        big = len(items) == 1 and items[0][2].size > DOWNLOAD_WINDOW
        bases = self._bases(items) if big else {}
        stream = None if big else iter(fetched if fetched is not None else self._fetch(items))
        for op, chunks, entry in items:
            if big:
                # named by content, so that a run killed halfway keeps what it wrote
                tmp = tmpdir / f"{entry.content_hash}.part"
                keep = verified_prefix(tmp, chunks)
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
                        self.core.emit({"event": "progress", "direction": "down", "path": entry.path, "done": written + len(data), "total": entry.size})
                        self.core.crash_point("download_window")
                    written += len(data)
                if big:
                    out.flush()
                    os.fsync(out.fileno())
            modes.apply_mode(tmp, entry.mode)
            if entry.mtime:
                os.utime(tmp, (entry.mtime, entry.mtime))
            staged.append((op, entry, tmp, chunks))
        if staged:
            durable.barrier(tmpdir)
        done = 0
        records: list[FileRecord] = []
        resolved: set[str] = set()  # each folder resolved once for the batch
        with self.core.state.tx():
            for op, entry, tmp, chunks in staged:
                rel = op.replace.rel if op.replace is not None else self.core.rel_for(op.remote.path)
                try:
                    target = self.core.abs_path(rel, resolved)
                    if not self._may_replace(op, target):
                        tmp.unlink(missing_ok=True)
                        continue
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if op.replace is not None:
                        rec = self.core.state.file(op.replace.rel)
                        if rec is not None:
                            self.core.keep_chunks(rec)
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
                self.core.state.set_base(
                    P.BaseItem(entry.ns_id, entry.node_id, op.remote.path, "file", entry.rev, op.remote.hash, s.st_ino)
                )
                done += 1
                self.core.emit({"op": "Download", "path": op.remote.path, "size": entry.size})
            self.core.state.put_files(records)
        if done:
            durable.barrier(self.core.root)
        self.core.crash_point("downloaded")
        return done

    def _stage_link(self, tmp: Path, op: P.Download, text: bytes) -> None:
        """Make a downloaded link at ``tmp``: only a link that stays inside the folder, the
        rule the sender's scanner applied (a server or another client could send any text)."""
        rel = op.replace.rel if op.replace is not None else self.core.rel_for(op.remote.path)
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
        rec = self.core.state.file(op.replace.rel)
        return rec is not None and rec.version == op.replace.hash and (rec.size, rec.mtime_ns, rec.inode, rec.mode) == (
            s.st_size, s.st_mtime_ns, s.st_ino, modes.mode_of(s)
        )

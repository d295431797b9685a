"""A block store in a local folder: one file per chunk, fanned out by hash prefix.

Layout: ``ROOT/ab/abcd…`` holds one chunk, a codec byte and the (maybe compressed) bytes
(`cubby.core.compression`); ``ROOT/tmp/`` holds writes in progress.

Why a chunk is written the way it is: bytes go to a temp file, are made durable, and only then
renamed to their name; the rename is made durable before the put returns. A crash therefore
leaves either no file under the name or the whole, correct chunk, never a torn one that a
later deduplication would trust. `put_many` does the same for a batch with two barriers in
total (``syncfs`` of the whole file system on Linux), instead of two fsyncs per chunk, which is
what makes thousands of small files cheap to store.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor
from pathlib import Path

from cubby.core.compression import Codec, CorruptChunk, verify_and_encode
from cubby.core.durable import barrier, fsync_dir, load_syncfs, write_all
from cubby.core.hashing import check_chunk_name, is_chunk_name, sha256_hex, verify_chunk
from cubby.errors import InsufficientStorage, NotFound

_TMP_MAX_AGE = 3600.0
"""Temp files older than this belong to a dead writer and are swept when a store opens."""


NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
DISK_FULL = (
    "the server is out of disk space and could not store these chunks (no partial chunk is kept); "
    "retry once its administrator has freed space"
)


@contextlib.contextmanager
def _full_disk_as_error() -> Iterator[None]:
    """A full disk (or quota) becomes `InsufficientStorage`; other failures pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_SPACE:
            raise InsufficientStorage(DISK_FULL) from exc
        raise


def _discard(paths: Iterable[str]) -> None:
    """Remove temp files of a failed write, whichever of them exist."""
    for p in paths:
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


class LocalBlockStore:
    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        codec: Codec | None = None,
        verify_reads: bool = True,
        executor: Executor | None = None,
    ) -> None:
        """``executor``: threads on which `put_many` verifies and compresses a batch's chunks
        (SHA-256 and zstd both release the GIL, so a batch uses every core it is given);
        without one, a batch is done on the calling thread."""
        self.executor = executor
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.codec = codec or Codec()
        self.verify_reads = verify_reads
        self._syncfs = load_syncfs()
        self.tmp.mkdir(parents=True, exist_ok=True)
        # 256 fan-out folders, made once: creating folders on the write path costs an fsync each.
        made = False
        for i in range(256):
            d = self.root / f"{i:02x}"
            if not d.is_dir():
                d.mkdir(exist_ok=True)
                made = True
        if made:
            self._barrier([self.root])
        fsync_dir(self.root)
        self._sweep_tmp()

    # -- layout -------------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        return self.root / name[:2] / check_chunk_name(name)

    def _sweep_tmp(self) -> None:
        cutoff = time.time() - _TMP_MAX_AGE
        for p in self.tmp.iterdir():
            try:
                if p.stat().st_mtime < cutoff:
                    p.unlink()
            except FileNotFoundError:
                pass

    def _barrier(self, fds_or_paths: list[Path]) -> None:
        """Make everything written so far durable: one syncfs, or an fsync per path."""
        barrier(self.root, fds_or_paths)

    def _write_tmp(self, blob: bytes, *, fsync: bool) -> Path:
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        self._write_at(str(tmp), blob, fsync=fsync)
        return tmp

    @staticmethod
    def _write_at(tmp: str, blob: bytes, *, fsync: bool) -> None:
        """Write ``blob`` to a new file ``tmp`` (never an existing one), fsynced if asked. On
        failure the partial file is removed; a full disk raises `InsufficientStorage`."""
        with _full_disk_as_error():
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                try:
                    write_all(fd, blob)
                    if fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
            except BaseException:
                _discard([tmp])
                raise

    # -- the BlockStore contract ----------------------------------------------------------------
    def put(self, name: str, data: bytes) -> bool:
        verify_chunk(name, data)
        final = self._path(name)
        if final.exists():
            return False
        tmp = self._write_tmp(self.codec.encode(data), fsync=True)
        with _full_disk_as_error():
            try:
                os.replace(tmp, final)
            except BaseException:
                _discard([str(tmp)])
                raise
        fsync_dir(final.parent)
        return True

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> list[bool]:
        """Verify every chunk, write the new ones to temp files, one barrier, rename them all
        into place, one more barrier.

        This is where the server verifies an uploaded chunk, and the only place: the upload
        route and `SqlMetadataStore.ingest_chunks` pass the bytes through unhashed. The loop
        works on plain strings because, for 4 KiB chunks, pathlib and a uuid per temp file
        cost as much as the hashing; one random token per call keeps temp names unique."""
        items = list(items)
        for name, _ in items:
            check_chunk_name(name)
        root = str(self.root)
        seen: set[str] = set()
        new: list[bool] = []
        for name, _ in items:
            new.append(name not in seen and not os.path.exists(f"{root}/{name[:2]}/{name}"))
            seen.add(name)
        # Every chunk is verified before anything is written (a batch with one bad chunk
        # stores nothing); the new ones are compressed in the same task.
        jobs = [(name, data, is_new) for (name, data), is_new in zip(items, new)]
        blobs = verify_and_encode(self.codec, jobs, self.executor)
        result: list[bool] = []
        pending: list[tuple[str, str]] = []
        token = f"{self.tmp}/{uuid.uuid4().hex}"
        fsync_each = self._syncfs is None
        with _full_disk_as_error():
            try:
                for (name, _), blob in zip(items, blobs):
                    if blob is None:
                        result.append(False)
                        continue
                    tmp = f"{token}.{len(pending)}.part"
                    self._write_at(tmp, b"".join(blob), fsync=fsync_each)
                    pending.append((tmp, f"{root}/{name[:2]}/{name}"))
                    result.append(True)
                if not pending:
                    return result
                self._barrier([])  # the bytes are durable before any name points at them
                dirs: set[str] = set()
                for tmp, final in pending:
                    os.replace(tmp, final)
                    dirs.add(os.path.dirname(final))
            except BaseException:
                # A failed batch (a full disk, say) leaves no temp file behind; chunks already
                # renamed are whole and verified, and unreferenced until a commit names them.
                _discard([tmp for tmp, _ in pending])
                raise
        self._barrier([Path(d) for d in sorted(dirs)])  # and the names are durable before we return
        return result

    def get(self, name: str) -> bytes:
        return self._get(name, self.verify_reads)

    def _get(self, name: str, verify: bool) -> bytes:
        path = self._path(name)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"chunk {name} is not stored") from None
        data = self.codec.decode(blob)
        if verify and sha256_hex(data) != name:
            raise CorruptChunk(f"stored chunk {name} does not match its name; it is not served")
        return data

    def get_many(self, names: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for name in names:
            try:
                found[name] = self.get(name)
            except NotFound:
                pass
        return found

    def read_many(self, names: Sequence[str], *, verify: bool = True) -> Iterator[tuple[str, bytes]]:
        for name in names:
            yield name, self._get(name, verify and self.verify_reads)

    def has(self, name: str) -> bool:
        return self._path(name).exists()

    def present(self, names: Iterable[str]) -> set[str]:
        return {n for n in names if self.has(n)}

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            pass

    def iterate(self) -> Iterator[str]:
        for first in sorted(self.root.iterdir()):
            if len(first.name) != 2 or not first.is_dir():
                continue
            for entry in os.scandir(first):
                if is_chunk_name(entry.name):
                    yield entry.name

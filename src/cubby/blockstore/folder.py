"""`FolderObjectStore`: the `ObjectStore` contract on a local (or shared network) folder.

An object ``a/b/c`` is the file ``ROOT/a/b/c``. Why a put is written the way it is: the bytes go
to a temp file in ``ROOT/tmp/``, are fsynced, renamed over the name, and the name's folder is
fsynced, so that a crash leaves either no object or the whole one, never a prefix a reader
would trust. Two processes (or hosts, on a shared folder) may put the same name at once: each
writes its own temp file and the last rename wins, which the contract allows because both
carry the same bytes. A `get` is one ``pread``. A large object is handed to the disk in pieces
as it is written (`cubby.core.durable.Writeback`), and `put_parts` (`StreamingPut`) writes an object whose
bytes are still being produced.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from cubby.blockstore.local import DISK_FULL, NO_SPACE
from cubby.blockstore.objects import ObjectMissing, ObjectStoreError, ShortRead
from cubby.core.durable import WRITE_PIECE, Writeback, fsync_dir, write_then_rename
from cubby.core.hashing import Sha256State
from cubby.errors import BadRequest, InsufficientStorage

_NAME = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_TMP = "tmp"
_TMP_MAX_AGE = 3600.0
"""Temp files older than this belong to a dead writer and are swept when a store opens."""


class BadObjectName(BadRequest):
    code = "bad_object_name"


def check_object_name(name: str) -> str:
    """``name`` if it is a valid object name (see `cubby.blockstore.objects`), else `BadObjectName`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or any(p in (".", "..") for p in name.split("/")):
        raise BadObjectName(f"invalid object name {name!r}")
    return name


SMALL_PART = 64 * 1024
"""Parts shorter than this are gathered and written together (`write_parts`)."""


def write_parts(fd: int, parts: Iterable[bytes | memoryview]) -> None:
    """Write every part to ``fd`` in order, `WRITE_PIECE` bytes per call, starting the disk's
    writeback as it goes (`Writeback`): a 16 MiB pack is handed to the disk in four pieces
    while it is written, instead of all at its fsync.

    Small parts (a 4 KiB chunk and its header are two) are gathered and written up to
    `WRITE_PIECE` at a time: a pack of 1,000 small chunks was 2,000 ``write`` calls, about a
    sixth of the server's CPU for storing them; joining them costs one copy of bytes that are
    in the CPU's cache."""
    disk = Writeback(fd)
    gathered: list[bytes | memoryview] = []
    size = 0

    def write(data: bytes | memoryview) -> None:
        with memoryview(data) as view:
            at, end = 0, len(view)
            while at < end:
                n = os.write(fd, view[at : min(end, at + WRITE_PIECE)])
                at += n
                disk.wrote(n)

    def flush() -> None:
        nonlocal size
        if gathered:
            write(b"".join(gathered))
            gathered.clear()
            size = 0

    for part in parts:
        n = len(part)
        if n >= SMALL_PART:
            flush()
            write(part)
            continue
        if size + n > WRITE_PIECE:
            flush()
        gathered.append(part)
        size += n
    flush()


class FolderObjectStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.tmp = self.root / _TMP
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._made: set[str] = set()
        self._sweep_tmp()

    def _path(self, name: str) -> str:
        check_object_name(name)
        if name == _TMP or name.startswith(_TMP + "/"):
            raise BadObjectName(f"object names may not start with {_TMP}/")
        return f"{self.root}/{name}"

    def _sweep_tmp(self) -> None:
        cutoff = time.time() - _TMP_MAX_AGE
        for entry in os.scandir(self.tmp):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass

    def _ensure_dir(self, folder: str) -> None:
        """Create ``folder`` (and its parents) durably, once per process."""
        if folder in self._made:
            return
        missing: list[str] = []
        d = folder
        while not os.path.isdir(d):
            missing.append(d)
            d = os.path.dirname(d)
        for m in reversed(missing):
            os.makedirs(m, exist_ok=True)
            fsync_dir(os.path.dirname(m))
        self._made.add(folder)

    def put(self, name: str, data: bytes) -> None:
        self.put_parts(name, (data,))

    def put_parts(
        self, name: str, parts: Iterable[bytes | memoryview], sha256: Mapping[int, Sha256State] | None = None
    ) -> None:
        """`StreamingPut.put_parts`: each part is written to the temp file as it comes, and the
        disk is asked to start on every few MiB written (`Writeback`), so
        that the fsync at the end waits for the last few MiB, not for the whole object (a
        file needs no hash of its body: ``sha256`` goes unused)."""
        final = self._path(name)
        folder = os.path.dirname(final)
        self._ensure_dir(folder)
        tmp = f"{self.tmp}/{uuid.uuid4().hex}.part"  # (a name no other writer uses)
        try:
            write_then_rename(final, tmp, lambda fd: write_parts(fd, parts), 0o644)
        except BaseException as exc:
            if not isinstance(exc, OSError):
                raise  # the parts' producer failed (a chunk that does not match its name)
            if exc.errno in NO_SPACE:  # a full disk is not a transient fault: 507, nothing kept
                raise InsufficientStorage(DISK_FULL) from exc
            raise ObjectStoreError(f"could not store object {name}: {exc}") from exc

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(name)
        if offset < 0 or (length is not None and length < 0):
            raise BadRequest(f"bad range {offset}+{length} for object {name}")
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectMissing(f"object {name} does not exist") from None
        try:
            if length is None:
                length = max(0, os.fstat(fd).st_size - offset)
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise ShortRead(f"object {name}: read {len(data)} of {length} bytes at {offset}", data)
        return data

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        root = str(self.root)
        for folder, dirs, files in os.walk(root):
            rel = os.path.relpath(folder, root)
            if rel == _TMP:
                dirs[:] = []
                continue
            base = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            if rel == ".":
                dirs[:] = [d for d in dirs if d != _TMP]
            # Prune folders that cannot hold a name with this prefix.
            dirs[:] = [d for d in dirs if (base + d + "/").startswith(prefix) or prefix.startswith(base + d + "/")]
            for f in files:
                name = base + f
                if name.startswith(prefix) and _NAME.fullmatch(name):
                    try:
                        yield name, os.stat(os.path.join(folder, f)).st_size
                    except FileNotFoundError:
                        pass

    def close(self) -> None:
        pass

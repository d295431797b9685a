"""The references every figure is a ratio to, measured in the same run on the same bytes.

- `read_hash_write`: read a file, SHA-256 it and write it elsewhere, made durable at the end.
  This is what any store must at least do with incoming bytes, single-threaded: the machine's
  limit for ingest and upload.
- `plain_copy`: read and write, durable at the end: the limit for a download.

Inputs are read once before a timed run (`warm`), for the reference and for what is compared
with it alike, so both start from the page cache and neither is charged for a cold disk.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from cubby.core.durable import fsync_dir

BUF = 1024 * 1024


def warm(path: Path) -> None:
    """Read ``path`` (a file or a folder of files) once, so it sits in the page cache."""
    paths = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    buf = bytearray(BUF)
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def drop(path: Path) -> None:
    """Remove a file written by a reference run, so that runs do not crowd the disk."""
    path.unlink(missing_ok=True)


def read_hash_write(src: Path, dst: Path) -> tuple[float, str]:
    """Seconds to read ``src``, SHA-256 it and write it to ``dst`` durably; and the digest."""
    h = hashlib.sha256()
    buf = bytearray(BUF)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
        while n := fi.readinto(buf):
            h.update(view[:n])
            fo.write(view[:n])
        os.fsync(fo.fileno())
    fsync_dir(dst.parent)
    return time.perf_counter() - t0, h.hexdigest()


def plain_copy(src: Path, dst: Path) -> float:
    """Seconds to copy ``src`` to ``dst`` durably, block by block (what `cp` then `sync` does)."""
    buf = bytearray(BUF)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
        while n := fi.readinto(buf):
            fo.write(view[:n])
        os.fsync(fo.fileno())
    fsync_dir(dst.parent)
    return time.perf_counter() - t0


def write_small_files(src_dir: Path, dst_dir: Path) -> float:
    """Seconds to copy every file below ``src_dir`` into ``dst_dir`` with SHA-256, durable at the end."""
    files = sorted(p for p in src_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    t0 = time.perf_counter()
    for p in files:
        data = p.read_bytes()
        hashlib.sha256(data).digest()
        out = dst_dir / p.relative_to(src_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    os.sync()
    return time.perf_counter() - t0

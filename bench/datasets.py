"""Benchmark inputs, made from a seed and kept in the scratch folder between runs.

- random: incompressible bytes (the worst case for compression, the common case for media).
- text: lines of word-like text drawn from a pool, in random order, so that it compresses
  (about 2-3x with zstd) like prose or logs, while no two chunks are alike (no free dedup).
- small files: many files of random bytes, each unique.

Files are made once per (kind, size, seed) and reused: making 1 GiB costs far more than a run.
"""

from __future__ import annotations

import array
import os
import random
from collections.abc import Iterator
from pathlib import Path

BLOCK = 16 * 2**20


def parse_size(text: str) -> int:
    """``1G``, ``256M``, ``4K``, ``1048576``: binary units (GiB, MiB, KiB)."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}.get(t[-1:], 1)
    number = t[:-1] if t[-1:] in "KMGT" else t
    return int(float(number) * mult)


def _random_blocks(size: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(BLOCK, left)
        yield rng.randbytes(n)
        left -= n


def _text_blocks(size: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    letters = b"etaoinshrdlucmfwypvbgkjqxz"
    words = [bytes(rng.choices(letters, k=rng.randint(2, 9))) for _ in range(8000)]
    pool = [b" ".join(rng.choices(words, k=rng.randint(6, 16))) + b".\n" for _ in range(65536)]
    left = size
    while left > 0:
        idx = array.array("H", rng.randbytes(2 * 40000))
        out = b"".join(map(pool.__getitem__, idx))[:left]
        left -= len(out)
        yield out


def _write(path: Path, blocks: Iterator[bytes]) -> Path:
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        fh.writelines(blocks)
    os.replace(tmp, path)
    return path


def dataset(scratch: Path, kind: str, size: int, seed: int = 1) -> Path:
    """The file of ``kind`` ("random" or "text") and ``size``, made if it is not there yet."""
    folder = scratch / "data"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{size}-{seed}.bin"
    if path.exists() and path.stat().st_size == size:
        return path
    print(f"making {kind} data: {size} bytes -> {path}", flush=True)
    if kind == "random":
        return _write(path, _random_blocks(size, seed))
    if kind == "text":
        return _write(path, _text_blocks(size, seed))
    raise ValueError(f"unknown dataset kind {kind!r}")


def small_files(scratch: Path, count: int, size: int, seed: int = 1) -> Path:
    """A folder of ``count`` files of ``size`` random bytes each, 1,000 per subfolder."""
    folder = scratch / "data" / f"small-{count}x{size}-{seed}"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    print(f"making {count} files of {size} bytes -> {folder}", flush=True)
    rng = random.Random(seed)
    for i in range(count):
        sub = folder / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:06d}.bin").write_bytes(rng.randbytes(size))
    marker.write_text("")
    return folder


def insert_byte(src: Path, dst: Path, at: int, byte: bytes = b"!") -> Path:
    """A copy of ``src`` with one byte inserted at offset ``at``."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        left = at
        while left > 0:
            piece = fi.read(min(BLOCK, left))
            if not piece:
                break
            fo.write(piece)
            left -= len(piece)
        fo.write(byte)
        while piece := fi.read(BLOCK):
            fo.write(piece)
    return dst

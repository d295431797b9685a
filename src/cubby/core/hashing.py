"""Hashing: a chunk is named by the SHA-256 of its plaintext, in lowercase hex.

The name is the chunk's identity everywhere (block store, blocklists, the wire), so the rules
for a well-formed name live here, once: exactly 64 lowercase hex digits. Anything else is
refused before it can become part of a file path, which is what keeps a name from ever
escaping the block store's folder.

hashlib releases the GIL while it hashes a buffer of 2 KiB or more, so chunks hashed from
several threads do use several cores; `hash_many` does that when given an executor. For a small
buffer that is a loss: the hashing takes microseconds, but winning the GIL back after it takes
up to the interpreter's switch interval (5 ms) while another thread runs Python. With one busy
thread beside it, hashing a 4 KiB chunk took 0.5-1.1 ms instead of 2 us (blake3 alike), and a
`cubby put` of small files, whose threads all hash small chunks, spent most of its time so. So
buffers under `HOLD_BELOW` are fed in pieces the libraries keep the GIL for (`update_holding`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from typing import Protocol

from cubby.errors import BadRequest, ChunkMismatch

HASH_HEX_LEN = 64
_CHUNK_NAME = re.compile(f"[0-9a-f]{{{HASH_HEX_LEN}}}")
"""A chunk name, matched whole: asked of every chunk of every request (commit, prove, upload),
and a compiled match cost half of a test of each character against a set."""

Buffer = bytes | bytearray | memoryview

GIL_PIECE = 2047
"""The longest update hashlib and blake3 hash without letting go of the GIL (they do for 2,048
bytes or more)."""
HOLD_BELOW = 64 * 1024
"""Buffers shorter than this are hashed holding the GIL (`update_holding`): at most about
100 us of hashing, which other threads wait out, against up to 5 ms to win the GIL back."""


class Updatable(Protocol):
    """A hasher (hashlib's, blake3's): fed bytes by ``update``."""

    def update(self, data: Buffer, /) -> object: ...


def update_holding(h: Updatable, data: Buffer) -> None:
    """``h.update(data)``, holding the GIL for a buffer under `HOLD_BELOW`: fed in pieces of
    `GIL_PIECE` bytes (see the module docstring). A larger buffer goes whole, and other
    threads run while it is hashed."""
    n = len(data)
    if n <= GIL_PIECE or n >= HOLD_BELOW:
        h.update(data)
        return
    with memoryview(data) as view:
        for at in range(0, n, GIL_PIECE):
            h.update(view[at : at + GIL_PIECE])


class Sha256State(Protocol):
    """A SHA-256 hasher (hashlib's) that has been fed some bytes: its digest is theirs, and a
    copy of it can be fed more, to hash those bytes followed by others without reading them
    again (`cubby.blockstore.s3chunked` signs a pack's chunks so)."""

    def update(self, data: Buffer, /) -> None: ...

    def copy(self) -> Sha256State: ...

    def hexdigest(self) -> str: ...


def sha256_state(data: Buffer) -> Sha256State:
    """A SHA-256 hasher fed ``data`` (a small one hashed holding the GIL)."""
    h = hashlib.sha256()
    update_holding(h, data)
    return h


def sha256_hex(data: Buffer) -> str:
    """The name of a chunk whose plaintext is ``data`` (a small one hashed holding the GIL)."""
    return sha256_state(data).hexdigest()


def hash_many(pieces: Sequence[Buffer], executor: Executor | None = None) -> list[str]:
    """Names of many chunks, in order; hashed on ``executor``'s threads when one is given.

    Worth it only for pieces of tens of KiB or more: below that the per-task overhead of an
    executor costs more than the hashing it spreads.
    """
    if executor is None or len(pieces) < 2:
        return [sha256_hex(p) for p in pieces]
    return list(executor.map(sha256_hex, pieces))


def is_chunk_name(name: object) -> bool:
    """True for a well-formed chunk name (64 lowercase hex digits, nothing else)."""
    return isinstance(name, str) and _CHUNK_NAME.fullmatch(name) is not None


def check_chunk_name(name: object) -> str:
    """Return ``name`` if it is a well-formed chunk name, else raise `BadRequest`."""
    if not is_chunk_name(name):
        raise BadRequest(
            f"invalid chunk name {str(name)[:80]!r}: expected 64 lowercase hex digits (a SHA-256)"
        )
    return name  # type: ignore[return-value]


def verify_chunk(name: str, data: Buffer) -> Sha256State:
    """Refuse a malformed name (`BadRequest`) or bytes that do not hash to it (`ChunkMismatch`);
    return the hasher that checked them, fed ``data`` (a writer that must hash the bytes again
    for another purpose, a signed S3 PUT, carries on from it instead).

    Block stores call this before they write anything, so a store never holds bytes under a
    name they do not match: deduplication trusts names, so a wrong one would silently corrupt
    every file that later reuses it.
    """
    check_chunk_name(name)
    state = sha256_state(data)
    actual = state.hexdigest()
    if actual != name:
        raise ChunkMismatch(
            f"chunk bytes hash to {actual}, not to the name {name}; nothing was stored",
            expected=name,
            actual=actual,
        )
    return state


def content_hash(chunk_names: Iterable[str]) -> str:
    """The hash of a whole file's content from its blocklist: SHA-256 over the concatenated
    32-byte binary chunk hashes, in order.

    It names the content without reading the bytes again, so two files with the same chunks
    compare equal by one string. The empty file (no chunks) hashes to SHA-256 of nothing.
    """
    return hashlib.sha256(bytes.fromhex("".join(chunk_names))).hexdigest()  # one conversion, not one per chunk

"""Hashing: chunks are named by the SHA-256 of their plaintext, in lowercase hex."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

HASH_HEX_LEN = 64
_HEX = re.compile(r"^[0-9a-f]{64}$")


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    """The name of a chunk. hashlib releases the GIL on large buffers, so threads hash in parallel."""
    return hashlib.sha256(data).hexdigest()


def is_chunk_name(name: object) -> bool:
    """True for a well-formed chunk name; used before a name ever becomes part of a file path."""
    return isinstance(name, str) and _HEX.match(name) is not None


def content_hash(chunk_names: Iterable[str]) -> str:
    """Hash of a whole file's content from its chunk names (SHA-256 over the binary chunk hashes):
    names the content without reading it again. The empty file hashes to SHA-256 of nothing."""
    h = hashlib.sha256()
    for name in chunk_names:
        h.update(bytes.fromhex(name))
    return h.hexdigest()

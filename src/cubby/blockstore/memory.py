"""An in-memory block store: the reference implementation of the contract, for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator

from cubby.core.hashing import is_chunk_name, sha256_hex
from cubby.errors import BadRequest, ChunkMismatch, NotFound


def verify(name: str, data: bytes | memoryview) -> None:
    """Refuse a bad name or bytes that do not hash to it, before anything is written."""
    if not is_chunk_name(name):
        raise BadRequest(f"invalid chunk name {str(name)[:80]!r}: expected 64 lowercase hex digits")
    actual = sha256_hex(data)
    if actual != name:
        raise ChunkMismatch(f"chunk bytes hash to {actual}, not to the name {name}; nothing was stored")


class MemoryBlockStore:
    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes) -> bool:
        verify(name, data)
        with self._lock:
            new = name not in self._data
            self._data[name] = bytes(data)
            return new

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> list[bool]:
        items = list(items)
        for name, data in items:
            verify(name, data)
        return [self.put(name, data) for name, data in items]

    def get(self, name: str) -> bytes:
        with self._lock:
            try:
                return self._data[name]
            except KeyError:
                raise NotFound(f"chunk {name} is not stored") from None

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._data

    def delete(self, name: str) -> None:
        with self._lock:
            self._data.pop(name, None)

    def iterate(self) -> Iterator[str]:
        with self._lock:
            names = list(self._data)
        return iter(names)

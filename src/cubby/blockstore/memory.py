"""An in-memory block store: the reference implementation of the contract, for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

from cubby.core.hashing import check_chunk_name, verify_chunk
from cubby.errors import NotFound


class MemoryBlockStore:
    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes) -> bool:
        verify_chunk(name, data)
        with self._lock:
            new = name not in self._data
            self._data[name] = bytes(data)
            return new

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> list[bool]:
        items = list(items)
        for name, data in items:
            verify_chunk(name, data)
        return [self.put(name, data) for name, data in items]

    def get(self, name: str) -> bytes:
        with self._lock:
            try:
                return self._data[name]
            except KeyError:
                raise NotFound(f"chunk {name} is not stored") from None

    def get_many(self, names: Sequence[str]) -> dict[str, bytes]:
        for name in names:
            check_chunk_name(name)
        with self._lock:
            return {n: self._data[n] for n in names if n in self._data}

    def read_many(self, names: Sequence[str], *, verify: bool = True) -> Iterator[tuple[str, bytes]]:
        for name in names:
            yield name, self.get(name)

    def has(self, name: str) -> bool:
        with self._lock:
            return name in self._data

    def present(self, names: Iterable[str]) -> set[str]:
        with self._lock:
            return {n for n in names if n in self._data}

    def delete(self, name: str) -> None:
        with self._lock:
            self._data.pop(name, None)

    def iterate(self) -> Iterator[str]:
        with self._lock:
            names = list(self._data)
        return iter(names)

"""Read-ahead as a wrapper: `ReadAheadObjectStore(inner)` answers a small ranged read with one
larger read of the object from that offset on, and serves the reads that follow from it.

Why: a pack store reads one chunk per call (about 1 MiB, 4 KiB for small files), and a file's
chunks lie one after another in the packs it was uploaded into. On object storage every call
is a request with a round trip and a fixed cost on the server, so a download made of a request
per chunk runs far below what the same server gives to a client reading 8 MiB at a time. One
read of ``window`` bytes serves the next several chunks from memory.

Objects are immutable (the `ObjectStore` contract), so a window never goes stale; deleting an
object through this wrapper forgets its windows (a window still in use elsewhere serves the
same, correct bytes). Memory is bounded: at most ``windows`` windows of ``window`` bytes are
kept, least recently used dropped first. Two threads that need the same window while it is
being read wait for that one read instead of making another.

Reads of ``straight`` bytes or more (1 MiB by default), and whole objects, go straight
through. Downloads read many chunks at once (`PackBlockStore.read_many`), already merged into
extents of up to `extents.SPAN` bytes (`cubby.blockstore.extents`); reading ahead of those does not save
requests but costs bytes. With ``straight`` at half the window, as before, extents of 2-4 MiB
each became an 8 MiB read: on a simulated 1 GiB download (chunks of 0.25-2 MiB in 16 MiB packs,
asked for in the client's 16 MiB windows) 1.35x the bytes came from the store, every
following extent waited for the window of the one before it instead of being read beside it,
and the window that ran past each pack's end was read twice. That cost was measured on Ceph
RGW, where the S3 server shares the machine's cores: ``cubby get`` took 18.1 s from S3 and
13.6 s from a folder (bench/README.md, branch ceph). Single-chunk reads (chunks average 1 MiB,
4 KiB for small files) still read ahead.

A window that runs past the end of its object is kept as the part that exists: the store's
`ShortRead` carries those bytes, so they are not read again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future

from cubby.blockstore.objects import (
    ObjectStore,
    ObjectStoreError,
    ShortRead,
    SignedPut,
    SignedRead,
    put_in_parts,
    signed_put,
    signed_read,
    stored_size,
)
from cubby.core.hashing import Sha256State

WINDOW = 8 << 20
"""Bytes per read-ahead: boto3's own transfer part size, and where a GET's fixed cost has
stopped mattering on the S3 servers we measured (moto, Ceph RGW)."""

STRAIGHT = 1 << 20
"""Reads of this many bytes or more are not read ahead (see the module docstring)."""


class ReadAheadObjectStore:
    def __init__(
        self, inner: ObjectStore, window: int = WINDOW, windows: int = 8, straight: int = STRAIGHT
    ) -> None:
        self.inner = inner
        self.window = window
        self.windows = windows
        self.straight = min(straight, window // 2)
        self._lock = threading.Lock()
        # (name, start) -> the window's bytes (shorter than `window` at the end of the object)
        self._cache: OrderedDict[tuple[str, int], Future[bytes]] = OrderedDict()

    def _find(self, name: str, offset: int, end: int) -> tuple[int, Future[bytes]] | None:
        """The start and bytes of a window (read, or being read) that may hold ``[offset, end)``."""
        for (n, start), fut in reversed(self._cache.items()):
            if n == name and start <= offset and end <= start + self.window:
                if fut.done() and (fut.exception() is not None or start + len(fut.result()) < end):
                    continue  # failed, or the object ends before `end`: not this window
                self._cache.move_to_end((n, start))
                return start, fut
        return None

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is None or length == 0 or length >= self.straight or offset < 0 or length < 0:
            return self.inner.get(name, offset, length)
        end = offset + length
        fut: Future[bytes]
        with self._lock:
            found = self._find(name, offset, end)
            mine = found is None
            if found is None:
                start, fut = offset, Future()
                self._cache[(name, offset)] = fut
                while len(self._cache) > self.windows:
                    self._cache.popitem(last=False)
            else:
                start, fut = found
        if mine:
            try:
                # An object shorter than the window gives fewer bytes: S3 serves the part of a
                # range that exists, and a short read is decided below against `end`.
                fut.set_result(self._read_window(name, offset))
            except BaseException as exc:
                fut.set_exception(exc)
                with self._lock:
                    if self._cache.get((name, offset)) is fut:
                        del self._cache[(name, offset)]
                raise
        data = fut.result()  # waits for another thread's read of this window
        piece = data[offset - start : end - start]
        if len(piece) != length:
            raise ObjectStoreError(f"short read of {name}: {len(piece)} of {length} bytes at {offset}")
        return piece

    def _read_window(self, name: str, offset: int) -> bytes:
        """The window at ``offset``; where the object ends inside it, the part that exists (the
        contract: every store reports a short read as `ShortRead`, with the bytes it got)."""
        try:
            return self.inner.get(name, offset, self.window)
        except ShortRead as short:
            return short.available

    def put(self, name: str, data: bytes) -> None:
        self.inner.put(name, data)

    def put_parts(
        self, name: str, parts: Iterable[bytes | memoryview], sha256: Mapping[int, Sha256State] | None = None
    ) -> None:
        """`StreamingPut.put_parts` of the inner store, or its `put` of the parts joined."""
        put_in_parts(self.inner, name, parts, sha256)

    def signed_read(self, name: str, offset: int, length: int) -> SignedRead | None:
        """The inner store's (`SignedReads`): made without a request, so nothing to retry or cache."""
        return signed_read(self.inner, name, offset, length)

    def signed_put(self, name: str, chunks: Sequence[tuple[int, str]]) -> SignedPut | None:
        """The inner store's (`SignedPuts`)."""
        return signed_put(self.inner, name, chunks)

    def stored_size(self, name: str) -> int | None:
        return stored_size(self.inner, name)

    def delete(self, name: str) -> None:
        self.inner.delete(name)
        with self._lock:
            for key in [key for key in self._cache if key[0] == name]:
                del self._cache[key]

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
        self.inner.close()

"""A bounded cache of recently used chunks, on disk in ``DIR/.cubby/cache``.

It keeps the chunks of local files that sync is about to delete or overwrite, so that content
coming back (a delete undone, a file that reappears under another name, an old version
restored) is rebuilt locally instead of fetched again. It lives on disk, not in memory, so the
client's memory does not grow with it; its size is set by the config (``sync_cache_mb``) and
the least recently used chunks are evicted past it. Every read is verified against the chunk's
name, so a damaged cache file costs a fetch, never a wrong byte.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

from cubby.core.hashing import sha256_hex


class ChunkCache:
    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max(0, int(max_bytes))
        self._lru: OrderedDict[str, int] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        found = []
        for p in folder.iterdir():
            try:
                st = p.stat()
            except OSError:
                continue
            if len(p.name) == 64:
                found.append((st.st_mtime, p.name, st.st_size))
        for _, name, size in sorted(found):
            self._lru[name] = size
            self._bytes += size
        self._evict()

    @property
    def size(self) -> int:
        return self._bytes

    def __contains__(self, h: str) -> bool:
        return h in self._lru

    def get(self, h: str) -> bytes | None:
        with self._lock:
            if h not in self._lru:
                return None
            self._lru.move_to_end(h)
        try:
            data = (self.folder / h).read_bytes()
        except OSError:
            data = b""
        if sha256_hex(data) != h:
            self._drop(h)
            return None
        return data

    def put(self, h: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            if h in self._lru:
                self._lru.move_to_end(h)
                return
        tmp = self.folder / f".{h}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.folder / h)
        with self._lock:
            self._lru[h] = len(data)
            self._bytes += len(data)
        self._evict()

    def _drop(self, h: str) -> None:
        with self._lock:
            size = self._lru.pop(h, None)
            if size is not None:
                self._bytes -= size
        (self.folder / h).unlink(missing_ok=True)

    def _evict(self) -> None:
        while True:
            with self._lock:
                if self._bytes <= self.max_bytes or not self._lru:
                    return
                h, size = self._lru.popitem(last=False)
                self._bytes -= size
            (self.folder / h).unlink(missing_ok=True)

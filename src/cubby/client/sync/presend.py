"""Chunks of a first sync's new small files, given to the server while the scan goes on.

A first sync of a tree of small files would hash every file before the plan, make the
folders, and only then start the uploads: the server sat idle for the whole scan (a fifth of
a first sync of the Python library). So while the scan hashes, each full group of new small
files (`BATCH` files or `GROUP_BYTES` of kept bytes) has its chunks proven, and the refused
ones uploaded, on worker threads (`cubby.client.upload.supply` after `needs_up_front`, the
same exchange a group's commit would start with); the uploads that follow the plan then
commit those files without proving their chunks again (`commit_group`'s ``skip``).

Why this keeps every promise:

- Nothing is committed here: a file appears on the server only through its commit, after the
  plan, and the server still refuses a commit that names a chunk the namespace may not use,
  answering which chunks it needs (`commit_group` then supplies them). A chunk whose group
  failed here is simply not skipped.
- It is the prove-first exchange unchanged (`cubby.metadata.possession`): a chunk is sent
  only after its proof was refused, so a chunk the server holds is not sent again, and the
  client learns nothing it could not learn by committing.
- No state is written: a crash leaves at most chunks that no file names yet, as a crash
  between a group's upload and its commit always could; the next pass proves them again.
- Only a folder with no base yet (its first sync), one namespace and no file on the server
  does this (a first sync beside files already there would prove chunks the plan may never
  upload), only for files the file index did not know (new, not edits, which go by patches),
  and only in full groups: a pass with a few new files sends them as before.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cubby.client import modes
from cubby.client.api import ApiClient
from cubby.client.localfiles import LocalChunk, LocalFile
from cubby.client.sync.state import FileRecord
from cubby.client.upload import needs_up_front, supply
from cubby.client.windows import BATCH, GROUP_BYTES

PRESEND_IN_FLIGHT = 2
"""Groups with the server at once while the scan goes on. More wait their turn without holding
up the scan: they hold only bytes the scan keeps anyway (within its `KeepBudget`)."""


class Presend:
    """Groups of new small files whose chunks go to the server while the scan still runs (see
    the module docstring). `add` is called on the engine's thread as files are hashed;
    `finish` waits for the groups sent and says which chunks the server has taken."""

    def __init__(self, api: ApiClient, ns_id: int, root: Path) -> None:
        self.api = api
        self.ns_id = ns_id
        self.root = root
        self._pool: ThreadPoolExecutor | None = None
        self._sent: list[Future[set[str]]] = []
        self._group: list[LocalFile] = []
        self._bytes = 0
        self._supplied: set[str] = set()
        self._claimed: set[str] = set()
        """Chunks of the groups sent so far (whether or not the server took them yet)."""

    def add(self, rel: str, rec: FileRecord, data: bytes) -> None:
        """A new file the scan hashed and kept the bytes of; a full group is sent now."""
        if rec.mode == modes.SYMLINK or not rec.chunks:
            return
        self._group.append(LocalFile(
            self.root / rel, rel, rec.size, rec.mtime_ns / 1e9,
            [LocalChunk(off, size, h) for h, off, size in rec.chunks], rec.inode, mode=rec.mode, data=data,
        ))
        self._bytes += rec.size
        if len(self._group) >= BATCH or self._bytes >= GROUP_BYTES:
            group, self._group, self._bytes = self._group, [], 0
            if self._pool is None:
                self._pool = ThreadPoolExecutor(PRESEND_IN_FLIGHT, thread_name_prefix="cubby-presend")
            self._sent.append(self._pool.submit(self._send, group, frozenset(self._claimed)))
            self._claimed.update(c.hash for lf in group for c in lf.chunks)

    def _send(self, group: list[LocalFile], claimed: frozenset[str]) -> set[str]:
        """Prove (and upload what is refused) every chunk of ``group`` that no earlier group
        has (``claimed``: two groups in flight at once would both see a chunk they share
        refused, and both send it); the chunks the server now lets the namespace use, or none
        if anything failed (on a worker thread)."""
        try:
            needs = needs_up_front(self.api, self.ns_id, [(lf, None) for lf in group], claimed)
            supply(self.api, self.ns_id, needs)
        except Exception:  # only a head start: the commit supplies whatever did not get there
            return set()
        return set(needs.where)

    def finish(self) -> set[str]:
        """Wait for the groups sent (a partial group is left to the uploads); the chunks the
        server took. Idempotent."""
        self._group, self._bytes = [], 0
        pool, self._pool = self._pool, None
        if pool is not None:
            with pool:
                for sent in self._sent:
                    self._supplied |= sent.result()
            self._sent.clear()
        return self._supplied

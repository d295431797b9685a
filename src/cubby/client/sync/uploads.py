"""The sync engine's side of uploads: commit planned uploads in batches, then supply what
the server asks for.

The files were already named by the scanner, so their `LocalFile`s are built from the state
database (never read again here); the chunk supply itself (proofs, patches, uploads) is
`cubby.client.upload.supply`, shared with `cubby put`. Kept apart from downloads because the
two directions share nothing but the core.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from cubby.client import modes
from cubby.client.api import commit_body
from cubby.client.localfiles import FileChanged, LocalChunk, LocalFile
from cubby.client.sync import planner as P
from cubby.client.sync.base import EngineCore, Failures
from cubby.client.upload import needs_for, supply
from cubby.client.windows import BATCH, DOWNLOAD_WINDOW
from cubby.errors import Conflict, CubbyError
from cubby.model import CommitResult, Entry


class Uploads:
    """Planned uploads, sent in batches (see the module docstring)."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core

    def upload(self, ops: Sequence[P.Upload], failures: Failures) -> int:
        """Commit many files in few requests: a thousand commits per batch, then one round of
        proofs and chunk uploads for everything the server asked for, then commit again."""
        ctx = self.core.context()
        groups: dict[int, list[tuple[P.Upload, LocalFile]]] = {}
        for op in ops:
            rec = self.core.state.file(op.local.rel)
            if rec is None or rec.version != op.local.hash:
                continue
            lf = LocalFile(
                self.core.abs_path(op.local.rel), op.local.path, rec.size, rec.mtime_ns / 1e9,
                [LocalChunk(off, size, h) for h, off, size in rec.chunks], rec.inode, mode=rec.mode,
            )
            if rec.mode == modes.SYMLINK:
                try:
                    lf.data = os.fsencode(os.readlink(lf.local))  # never read through the link
                except OSError:
                    continue
            ns_id = ctx.mounts[P.mount_of(op.local.path, ctx.mounts)][0]
            groups.setdefault(ns_id, []).append((op, lf))
        done = 0
        for ns_id, items in groups.items():
            for i in range(0, len(items), BATCH):
                done += self._upload_group(ns_id, items[i : i + BATCH], failures)
        return done

    def _still_same(self, op: P.Upload, lf: LocalFile) -> bool:
        try:
            s = os.lstat(lf.local)
        except OSError:
            return False
        rec = self.core.state.file(op.local.rel)
        return rec is not None and (rec.size, rec.mtime_ns, rec.inode, rec.mode) == (s.st_size, s.st_mtime_ns, s.st_ino, modes.mode_of(s))

    def _upload_group(self, ns_id: int, items: list[tuple[P.Upload, LocalFile]], failures: Failures) -> int:
        done = 0
        pending = [(op, lf) for op, lf in items if self._still_same(op, lf)]
        for _attempt in range(3):
            if not pending:
                break
            bodies = [commit_body(lf.remote, lf.size, lf.refs, op.expected_rev, lf.mtime, lf.mode) for op, lf in pending]
            outcomes = self.core.api.commit_batch(bodies)
            needing: list[tuple[P.Upload, LocalFile, CommitResult]] = []
            with self.core.state.tx():
                for (op, lf), out in zip(pending, outcomes):
                    if isinstance(out, CubbyError):
                        if not isinstance(out, Conflict):
                            failures.append({"op": "Upload", "path": lf.remote, "error": f"{out.message} [{out.code}]"})
                        continue
                    if out.entry is not None:
                        self._committed(out.entry, lf)
                        done += 1
                        self.core.emit({"op": "Upload", "path": out.entry.path, "size": lf.size})
                    else:
                        needing.append((op, lf, out))
            self.core.crash_point("committed")
            if not needing:
                break
            try:
                supply(
                    self.core.api, ns_id, needs_for([(lf, out) for _, lf, out in needing]),
                    self._progress_up(sum(lf.size for _, lf, _ in needing)),
                )
            except FileChanged:
                self.core.state.drop_files(op.local.rel for op, _, _ in needing)  # read again next scan
                break
            self.core.crash_point("supplied")
            pending = [(op, lf) for op, lf, _ in needing]
        return done

    def _progress_up(self, total: int) -> Callable[[int], None]:
        sent = 0

        def progress(n: int) -> None:
            nonlocal sent
            sent += n
            if total > DOWNLOAD_WINDOW:  # only long transfers are worth a progress line
                self.core.emit({"event": "progress", "direction": "up", "done": sent, "total": total})

        return progress

    def _committed(self, e: Entry, lf: LocalFile) -> None:
        if self.core.state.put_remote_entry(e):
            self.core.state.set_base(P.BaseItem(e.ns_id, e.node_id, e.path, "file", e.rev, modes.version(e.content_hash, e.mode), lf.inode))

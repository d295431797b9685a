"""The sync engine's side of uploads: commit planned uploads in batches, then supply what
the server asks for.

The files were already named by the scanner, so their `LocalFile`s are built from its records
(or, for a file hashed by an earlier scan, the state database), never hashed again here: the
scan's stamp of each file says it is the one named. A small file whose bytes the scan kept
(`ScanResult.kept`) is sent from them, so a new file is read once. Committing a group and
supplying its chunks (proofs, patches, uploads) is
`cubby.client.upload.commit_group` on a `Pipeline`, shared with `cubby put`. Kept apart from downloads because the
two directions share nothing but the core.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

from cubby.client import modes
from cubby.client.localfiles import FileChanged, LocalChunk, LocalFile
from cubby.client.pipeline import Pipeline
from cubby.client.sync import planner as P
from cubby.client.sync.base import EngineCore, Failures
from cubby.client.sync.state import FileRecord
from cubby.client.sync.trust import Resolved
from cubby.client.upload import Outcome, commit_group
from cubby.client.windows import BATCH, DOWNLOAD_WINDOW, IN_FLIGHT
from cubby.errors import Conflict, CubbyError
from cubby.model import Entry

Group = list[tuple[P.Upload, LocalFile]]


class Uploads:
    """Planned uploads, sent in batches (see the module docstring)."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self._skip: set[str] = set()
        """Chunks the server took while the scan went on (`presend`): not proven again."""
        self._recs: dict[str, FileRecord] = {}
        """rel -> the index record each planned upload was built from (`_still_same`)."""

    def upload(self, ops: Sequence[P.Upload], failures: Failures) -> int:
        """Commit many files in few requests: groups of a thousand commits, each followed by
        one round of proofs and chunk uploads for everything the server asked for, then a
        commit again (`cubby.client.upload.commit_group`, as `cubby put` does). Groups are
        pipelined the same way: up to `IN_FLIGHT` with the server while this thread prepares
        the next and records the answers of those done (in the state, on this thread). A
        group goes as soon as it is full, so the server starts on the first thousand files
        while this thread still builds the rest (on a first sync of 20,000 files, building
        them all first kept the server idle for two seconds)."""
        done = 0
        self._skip = self.core.end_presend()
        try:
            with Pipeline(IN_FLIGHT) as pipe:
                for ns_id, items in self._groups(ops):
                    group = [(op, lf) for op, lf in items if self._still_same(op, lf)]
                    if not group:
                        continue
                    for sent, outcomes in pipe.submit(lambda ns_id=ns_id, group=group: self._send(ns_id, group)):  # type: ignore[misc]
                        done += self._record(sent, outcomes, failures)
                for sent, outcomes in pipe.drain():
                    done += self._record(sent, outcomes, failures)
        finally:
            self._recs.clear()
        return done

    def _groups(self, ops: Sequence[P.Upload]) -> Iterator[tuple[int, Group]]:
        """The uploads as groups of at most `BATCH` files of one namespace, each given as soon
        as it is full (the rest at the end)."""
        ctx = self.core.context()
        groups: dict[int, Group] = {}
        resolved: Resolved = {}  # each folder resolved once for the whole batch
        scanned = self.core.last_scan
        stamps, records, kept = scanned.stamps, scanned.records, scanned.kept
        for op in ops:
            rel = op.local.rel
            rec = records.get(rel) or self.core.state.file(rel)  # hashed by this round's scan, or before
            if rec is None or rec.version != op.local.hash:
                continue
            self._recs[rel] = rec
            stamp = stamps.get(rel)
            lf = LocalFile(
                self.core.abs_path(rel, resolved), op.local.path, rec.size, rec.mtime_ns / 1e9,
                [LocalChunk(off, size, h) for h, off, size in rec.chunks], rec.inode, mode=rec.mode,
                # the scan named it from this very stamp: reading it back needs no second hash
                stamp=stamp if stamp is not None and (stamp[0], stamp[1], stamp[3]) == (rec.size, rec.mtime_ns, rec.inode) else None,
                # the bytes the scan named it from, if it kept them: not read again at all
                data=kept.pop(rel, None) if rec is records.get(rel) else None,
            )
            if rec.mode == modes.SYMLINK:
                try:
                    lf.data = os.fsencode(os.readlink(lf.local))  # never read through the link
                except OSError:
                    continue
            ns_id = ctx.mounts[P.mount_of(op.local.path, ctx.mounts)][0]
            group = groups.setdefault(ns_id, [])
            group.append((op, lf))
            if len(group) >= BATCH:
                yield ns_id, groups.pop(ns_id)
        yield from groups.items()

    def _still_same(self, op: P.Upload, lf: LocalFile) -> bool:
        """Is the file still the one indexed when this batch began? (The index record read
        then is kept: only this thread writes the index while the batch is sent.)"""
        try:
            s = os.lstat(lf.local)
        except OSError:
            return False
        rec = self._recs.pop(op.local.rel, None)
        return rec is not None and (rec.size, rec.mtime_ns, rec.inode, rec.mode) == (s.st_size, s.st_mtime_ns, s.st_ino, modes.mode_of(s))

    def _send(self, ns_id: int, group: Group) -> tuple[Group, list[Outcome] | None]:
        """Commit and supply one group (on a pipeline thread; touches no state). None: a file
        changed while its chunks were read, and nothing of the group is known to be committed."""
        try:
            outcomes, _ = commit_group(
                self.core.api, ns_id, [(lf, op.expected_rev) for op, lf in group],
                self._progress_up(sum(lf.size for _, lf in group), [lf.remote for _, lf in group]),
                on_commit=lambda _: self.core.crash_point("committed"), skip=self._skip,
            )
        except FileChanged:
            return group, None
        self.core.crash_point("supplied")
        return group, outcomes

    def _record(self, group: Group, outcomes: list[Outcome] | None, failures: Failures) -> int:
        """Record one group's answers: each commit the server took joins the base."""
        if outcomes is None:
            self.core.state.drop_files(op.local.rel for op, _ in group)  # read again next scan
            return 0
        committed: list[tuple[Entry, LocalFile]] = []
        for (_, lf), out in zip(group, outcomes):
            lf.data = None  # sent: kept bytes are not held for the rest of the pass
            if isinstance(out, CubbyError):
                if not isinstance(out, Conflict):
                    failures.append({"op": "Upload", "path": lf.remote, "error": f"{out.message} [{out.code}]"})
                continue
            if out.entry is not None:
                committed.append((out.entry, lf))
        # Only now, with the server's answers in hand, does any of them join the trees: one
        # transaction for the group (a crash before it leaves the base behind both sides,
        # which the next plan adopts without sending anything again).
        st = self.core.state
        with st.tx():
            taken = st.put_remote_entries(e for e, _ in committed)
            st.set_bases(
                P.BaseItem(e.ns_id, e.node_id, e.path, "file", e.rev, modes.version(e.content_hash, e.mode), lf.inode)
                for (e, lf), ok in zip(committed, taken) if ok
            )
        for e, lf in committed:
            self.core.emit({"op": "Upload", "path": e.path, "size": lf.size})
        return len(committed)

    def _progress_up(self, total: int, remotes: list[str]) -> Callable[[int], None]:
        """Progress lines of one group's upload: named by its file when it holds one (a large
        file travels alone), else by how many files it holds."""
        sent = 0
        named = {"path": remotes[0]} if len(remotes) == 1 else {"files": len(remotes)}

        def progress(n: int) -> None:
            nonlocal sent
            sent += n
            if total > DOWNLOAD_WINDOW:  # only long transfers are worth a progress line
                self.core.emit({"event": "progress", "direction": "up", **named, "done": sent, "total": total})

        return progress

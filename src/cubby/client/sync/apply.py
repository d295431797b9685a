"""Applying a plan: each planned operation done on the disk or on the server, then recorded.

Crash safety comes from the order of every step: the side effect happens first (a rename on
disk, a commit on the server), then its record in the base. A crash in between leaves a base
that is behind both sides, which the next plan sees as "both changed to the same thing" and
adopts without transferring anything. Folder creations, moves and deletes on the server go in
batch requests; uploads and downloads are handed to `Uploads` and `Downloads`. A local delete
checks that the file is still the one the plan saw, so an edit made meanwhile is never lost.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cubby.client import modes
from cubby.client.sync import planner as P
from cubby.client.sync.base import EngineCore, Failures, PassReport, base_of, path_of
from cubby.client.sync.downloads import Downloads
from cubby.client.sync.ignore import IgnoreRules
from cubby.client.sync.trust import shown
from cubby.client.sync.uploads import Uploads
from cubby.core import durable, paths
from cubby.errors import Conflict, CubbyError, NotFound, Unavailable
from cubby.model import Entry


class Applier:
    """Applies plans (see the module docstring)."""

    def __init__(self, core: EngineCore, uploads: Uploads, downloads: Downloads) -> None:
        self.core, self.uploads, self.downloads = core, uploads, downloads

    def apply(self, ops: Sequence[P.Op], report: PassReport, failures: Failures) -> int:
        """Apply one plan; returns how many operations succeeded. Unavailable propagates (the
        caller backs off); any other error fails that operation only."""
        done = 0
        uploads = [o for o in ops if isinstance(o, P.Upload)]
        downloads = [o for o in ops if isinstance(o, P.Download)]
        rest = [o for o in ops if not isinstance(o, (P.Upload, P.Download))]
        first = [o for o in rest if not isinstance(o, (P.DeleteLocal, P.DeleteRemote))]
        deletes = [o for o in rest if isinstance(o, (P.DeleteLocal, P.DeleteRemote))]

        def one(op: P.Op) -> None:
            nonlocal done
            try:
                if self._apply_one(op):
                    done += 1
                    report.count(type(op).__name__)
                    self.core.emit({"op": type(op).__name__, "path": path_of(op)})
                    self.core.crash_point(type(op).__name__)
            except Unavailable:
                raise
            except (CubbyError, OSError) as exc:
                failures.append({"op": type(op).__name__, "path": path_of(op), "error": str(exc)})

        remote: list[P.Op] = []
        folders: list[P.MkdirLocal] = []
        for op in first:
            if isinstance(op, (P.MkdirRemote, P.MoveRemote)):
                done += self._mkdirs_local(folders, report, failures)
                folders = []
                remote.append(op)  # sent together, in plan order, with the next local op
                continue
            done += self._apply_remote(remote, report, failures)
            remote = []
            if isinstance(op, P.MkdirLocal):
                folders.append(op)  # made together, in plan order, before the next other op
                continue
            done += self._mkdirs_local(folders, report, failures)
            folders = []
            one(op)
        # The last folders made before the transfers wait for the downloads' first barrier (a
        # first download makes thousands, and its barrier had the disk to itself while the
        # client and the server waited); without downloads they get their own.
        made = self._make_folders(folders, failures) if downloads else []
        if not downloads:
            done += self._mkdirs_local(folders, report, failures)
        done += self._apply_remote(remote, report, failures)
        if uploads:
            n = self.uploads.upload(uploads, failures)
            done += n
            if n:
                report.count("Upload", n)
        if downloads:
            recorded = 0

            def record_made() -> None:
                nonlocal recorded
                recorded = self._record_folders(made, report)

            n = self.downloads.download(downloads, failures, made_durable=record_made if made else None)
            done += n + recorded
            if n:
                report.count("Download", n)
        remote = []
        for dop in deletes:
            if isinstance(dop, P.DeleteRemote):
                if dop.remote.kind == "folder" and not self._folder_unchanged(dop.remote):
                    continue  # something arrived in it meanwhile: the next round learns what
                remote.append(dop)
            else:
                one(dop)
        done += self._apply_remote(remote, report, failures)
        return done

    def _apply_remote(self, ops: Sequence[P.Op], report: PassReport, failures: Failures) -> int:
        """Folder creations, moves and deletes on the server, a batch request per thousand
        (`ApiClient.batch`), applied there in this order; each answer is then recorded in the
        base as the single operation would record it. A conflict or a vanished source is not a
        failure: the server moved on and the next plan sees how."""
        if not ops:
            return 0
        cursors = self.core.state.cursors()
        bodies: list[dict[str, Any]] = []
        for op in ops:
            if isinstance(op, P.MkdirRemote):
                bodies.append({"op": "mkdir", "path": op.local.path})
            elif isinstance(op, P.MoveRemote):
                bodies.append({"op": "move", "from_path": op.path, "to_path": op.new_path, "expected_rev": op.expected_rev})
            elif isinstance(op, P.DeleteRemote):
                since = cursors.get(op.remote.ns_id) if op.remote.kind == "folder" else None
                bodies.append({"op": "delete", "path": op.remote.path, "expected_rev": op.remote.rev, "unchanged_since": since})
        outcomes = self.core.api.batch(bodies)
        self.core.crash_point("batched_remote")
        done = 0
        st = self.core.state
        made: list[tuple[P.MkdirRemote, Entry]] = []

        def record_made() -> int:
            """Record a run of folder creations together (a first sync makes thousands), in
            plan order with the other operations of the batch."""
            taken = st.put_remote_entries(out for _, out in made)
            for (op, out), ok in zip(made, taken):
                if not ok:  # refused (recorded by the state), never acted on
                    failures.append({"op": "MkdirRemote", "path": path_of(op), "error": f"the server answered with {shown(out.path)!r}"})
            st.set_bases(
                P.BaseItem(out.ns_id, out.node_id, out.path, "folder", out.rev, None, op.local.inode)
                for (op, out), ok in zip(made, taken) if ok
            )
            for (op, _), ok in zip(made, taken):
                if ok:
                    report.count("MkdirRemote")
                    self.core.emit({"op": "MkdirRemote", "path": path_of(op)})
            n = sum(taken)
            made.clear()
            return n

        with st.tx():
            for op, out in zip(ops, outcomes, strict=True):
                name = type(op).__name__
                if isinstance(op, P.MkdirRemote) and isinstance(out, Entry):
                    made.append((op, out))
                    continue
                done += record_made()
                if isinstance(out, CubbyError):
                    if isinstance(out, (Conflict, NotFound)) and not isinstance(op, P.MkdirRemote):
                        # Nothing is recorded: a delete that finds no file at the path does not
                        # mean the file is gone (another client may have renamed a folder above
                        # it). The journal says what happened, and the next plan acts on it;
                        # recording the node as deleted here left it out of the remote tree
                        # for good while the server still held it.
                        continue
                    else:
                        failures.append({"op": name, "path": path_of(op), "error": str(out)})
                        continue
                if isinstance(op, P.MoveRemote):
                    assert isinstance(out, Entry)
                    if not st.put_remote_entry(out):
                        # refused (recorded by the state), never acted on
                        failures.append({"op": name, "path": path_of(op), "error": f"the server answered with {shown(out.path)!r}"})
                        continue
                    st.move_base(op.node, out.path)
                elif isinstance(op, P.DeleteRemote):
                    st.delete_remote(op.remote.node)
                    st.forget_base(op.remote.node)
                done += 1
                report.count(name)
                self.core.emit({"op": name, "path": path_of(op)})
            done += record_made()
        return done

    def _mkdirs_local(self, ops: Sequence[P.MkdirLocal], report: PassReport, failures: Failures) -> int:
        """Make folders on disk, make them durable with one barrier, then record them all in
        one transaction (a first sync of a real tree makes thousands)."""
        made = self._make_folders(ops, failures)
        if not made:
            return 0
        durable.barrier(self.core.root)
        return self._record_folders(made, report)

    def _make_folders(self, ops: Sequence[P.MkdirLocal], failures: Failures) -> list[tuple[P.MkdirLocal, int]]:
        """Make folders on disk (not yet durable, not recorded): each made, with its inode."""
        made: list[tuple[P.MkdirLocal, int]] = []
        for op in ops:
            try:
                folder = self.core.abs_path(self.core.rel_for(op.remote.path))
                folder.mkdir(parents=True, exist_ok=True)
                made.append((op, os.stat(folder).st_ino))
            except Unavailable:
                raise
            except (CubbyError, OSError) as exc:
                failures.append({"op": "MkdirLocal", "path": op.remote.path, "error": str(exc)})
        return made

    def _record_folders(self, made: Sequence[tuple[P.MkdirLocal, int]], report: PassReport) -> int:
        """Record folders `_make_folders` made, once a barrier made them durable: a folder
        recorded and then lost in a crash would look deleted here, and be deleted there."""
        self.core.state.set_bases([base_of(op.remote, inode) for op, inode in made])
        for op, _ in made:
            report.count("MkdirLocal")
            self.core.emit({"op": "MkdirLocal", "path": op.remote.path})
            self.core.crash_point("MkdirLocal")
        return len(made)

    def _apply_one(self, op: P.Op) -> bool:
        st = self.core.state
        if isinstance(op, P.Adopt):
            st.set_base(base_of(op.remote, op.local.inode))
        elif isinstance(op, P.Forget):
            st.forget_base(op.node)
        elif isinstance(op, P.RecordMove):
            st.move_base(op.node, op.new_path, op.inode)
        elif isinstance(op, P.Blocked):
            return False
        elif isinstance(op, P.ConflictCopy):
            target = self.core.rel_for(op.new_path)
            if os.path.lexists(self.core.abs_path(target)):
                raise Conflict(f"{target} appeared meanwhile")
            self.core.abs_path(target).parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.core.abs_path(op.rel), self.core.abs_path(target))
            st.rename_files(op.rel, target)
            self.core.emit({"event": "conflict", "path": op.new_path, "reason": op.reason})
        elif isinstance(op, P.MoveLocal):
            target = self.core.rel_for(op.new_path)
            if os.path.lexists(self.core.abs_path(target)) and paths.key(target) != paths.key(op.rel):
                raise Conflict(f"{target} appeared meanwhile")
            self.core.abs_path(target).parent.mkdir(parents=True, exist_ok=True)
            os.rename(self.core.abs_path(op.rel), self.core.abs_path(target))
            self.core.crash_point("moved_local")
            st.rename_files(op.rel, target)
            st.move_base(op.node, op.new_path)
        elif isinstance(op, P.DeleteLocal):
            return self._delete_local(op)
        return True

    def _folder_unchanged(self, folder: P.RemoteItem) -> bool:
        """Does the server's subtree hold exactly what the remote tree says? A folder delete
        takes its whole subtree on the server, and ``expected_rev`` only covers the folder
        itself, so a file another client just added to it must be seen first, or it would
        go with the folder. A change landing between this listing and the delete is caught
        by the server: the delete carries ``unchanged_since`` (this namespace's cursor) and is
        refused if anything below the folder changed after it."""
        known = {(r.node_id, r.rev) for r in self.core.state.remote_items()
                 if r.ns_id == folder.ns_id and paths.is_within(r.path, folder.path) and r.path != folder.path}
        try:
            for e in self.core.api.list(folder.path, recursive=True):
                if (e.node_id, e.rev) not in known:
                    return False
        except NotFound:
            return True
        return True

    def _delete_local(self, op: P.DeleteLocal) -> bool:
        p = self.core.abs_path(op.local.rel)
        if op.local.kind == "file":
            rec = self.core.state.file(op.local.rel)
            try:
                s = os.lstat(p)
            except FileNotFoundError:
                self.core.state.forget_base(op.node)
                return True
            if rec is None or (rec.size, rec.mtime_ns, rec.inode, rec.mode) != (s.st_size, s.st_mtime_ns, s.st_ino, modes.mode_of(s)):
                return False  # edited since the scan: keep it, the next plan uploads it
            self.core.keep_chunks(rec)
            p.unlink()
            self.core.state.drop_files([op.local.rel])
        else:
            try:
                os.rmdir(p)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                rules = IgnoreRules.load(self.core.root)
                for dirpath, dnames, fnames in os.walk(p):
                    for name in fnames + dnames:
                        rel = os.path.relpath(os.path.join(dirpath, name), self.core.root).replace(os.sep, "/")
                        is_dir = os.path.isdir(os.path.join(dirpath, name))
                        if not rules.ignored(rel, is_dir) and not (is_dir and _only_ignored(Path(dirpath) / name, self.core.root, rules)):
                            return False  # something new arrived: keep the folder
                shutil.rmtree(p)
        self.core.state.forget_base(op.node)
        return True

    def follow_mount_moves(self, local: Sequence[P.LocalItem]) -> None:
        """A shared folder's mount point renamed or moved on disk is a move of the mount on the
        server (it only changes where the folder appears in this user's tree), as in Dropbox:
        not a delete of the folder's contents and an upload of a copy. Recognised by the
        folder's inode; anything less certain is left to the planner, which restores the mount."""
        namespaces = self.core.state.namespaces().values()
        mounts = [ns.mount for ns in namespaces if ns.mount != paths.ROOT]
        if not mounts:
            return
        bases = self.core.state.mount_bases()
        for ns in namespaces:
            base = bases.get(ns.ns_id)
            if ns.mount == paths.ROOT or base is None or not base.inode or os.path.isdir(self.core.abs_path(self.core.rel_for(ns.mount))):
                continue
            moved = [item for item in local if item.kind == "folder" and item.inode == base.inode]
            if len(moved) != 1 or any(paths.is_within(moved[0].path, m) for m in mounts):
                continue
            try:
                self.core.api.move(ns.mount, moved[0].path)
            except CubbyError as exc:
                self.core.emit({"event": "mount_move_refused", "path": ns.mount, "to": moved[0].path, "error": exc.code})
                continue
            self.core.state.move_mount(ns.ns_id, moved[0].path)
            self.core.emit({"event": "mount_moved", "ns_id": ns.ns_id, "from": ns.mount, "to": moved[0].path})



def _only_ignored(d: Path, root: Path, rules: IgnoreRules) -> bool:
    for dirpath, _dnames, fnames in os.walk(d):
        for name in fnames:
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if not rules.ignored(rel, False):
                return False
    return True

"""`FileWrites`: commits, folders, deletes, renames and restores inside one namespace.

Each operation is one `NamespaceTxn` (`cubby.metadata.nstxn.write_namespace`) on the
`Database` it is given: it checks, then writes, and either appends one journal entry per
changed node or changes nothing. Validation that needs no database runs before the lock is
taken, so the lock is held only for the work that needs it.

What crosses namespaces: nothing is written outside the transaction's namespace. Two reads
reach beyond it: a commit's chunks may be usable because a namespace in ``readable`` (one the
caller can read) holds them (``ns_chunks`` of those namespaces: sharded, a possession check
on each of their shards before the commit, no intent needed since it only reads), and
`cubby.metadata.tree.same_as_before_share` reads the owner's root. A move *between*
namespaces is `cubby.metadata.moves`.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, select, update

from cubby.core import delta, paths
from cubby.core.hashing import content_hash
from cubby.errors import BadRequest, Conflict, CubbyError, NamespaceMoved, NotFound, SizeMismatch
from cubby.metadata import sqlitedriver
from cubby.metadata.engine import Database
from cubby.metadata.nstxn import NamespaceTxn, entry_of, key_range, write_namespace
from cubby.metadata.pgdriver import HELD_CHUNKS, array_text, driver_execute, nodes_and_chunks
from cubby.metadata.possession import Challenges
from cubby.metadata.reads import FileReads, node_for_history
from cubby.metadata.schema import blocks, file_revs, namespaces, nodes, ns_chunks
from cubby.metadata.tree import (
    check_folders,
    ensure_folder,
    frozen_or_mount_below,
    guard_mounts,
    is_frozen,
    remove_node,
    same_as_before_share,
)
from cubby.model import FILE_MODES, ChunkRef, CommitRequest, CommitResult, Entry, NeededChunk

MAX_CHUNK_BYTES = 16 * 1024 * 1024
"""Sanity bound on a declared chunk size; real chunks are at most 4 MiB (core.chunking)."""
MAX_CHUNKS_PER_FILE = 1_000_000
HASH_RE = re.compile(r"^[0-9a-f]{64}$")


def content_hash_of(chunks: Sequence[ChunkRef]) -> str:
    return content_hash(c.hash for c in chunks)


def file_texts(chunks: Sequence[ChunkRef]) -> tuple[str, str]:
    """A file revision's content hash and its ``blocklist`` column (JSON of [hash, size]
    pairs, as `json.dumps` writes it compactly). Pure: `commit_many` takes them for its whole
    batch before the namespace lock, so that the lock is held only for the database's work."""
    return content_hash_of(chunks), orjson.dumps([[c.hash, c.size] for c in chunks]).decode()


_HELD = select(
    blocks.c.hash,
    blocks.c.size,
    select(ns_chunks.c.hash)
    .where(ns_chunks.c.hash == blocks.c.hash, ns_chunks.c.ns_id.in_(bindparam("nss", expanding=True)))
    .exists(),
).where(blocks.c.hash.in_(bindparam("hashes", expanding=True)))
"""Stored chunks among ``hashes``: (hash, size, held by one of the namespaces ``nss``)."""
_HELD_LOCKED = _HELD.with_for_update(read=True, of=blocks)
"""`_HELD` with the ``blocks`` rows (only those) locked in share mode."""


HeldCheck = Callable[[NamespaceTxn, Sequence[str]], Iterable[tuple[str, int, bool]]]
"""Of some chunk hashes, the stored ones as (hash, size, held by the transaction's namespace
or one it may read), made safe against garbage collection until the transaction commits."""


def settling_cut(tx: NamespaceTxn) -> int | None:
    """The cut of ``tx``'s namespace while it is ``settling`` (a share across shards mounted
    it and has not acknowledged yet: `cubby.metadata.share_steps`), else None. A delete then
    was issued before the share was acknowledged: it forgets the copied history too."""
    row = tx.conn.execute(
        select(namespaces.c.cut).where(namespaces.c.ns_id == tx.ns_id, namespaces.c.settling.is_(True))
    ).first()
    return None if row is None or row[0] is None else int(row[0])


def _check_target(tx: NamespaceTxn, path: str, key: str, expected_rev: int | None, *, check_rev: bool = True) -> Any:
    """The live node at ``path`` (None: none), once a file revision may be written there: not
    a folder, and (``check_rev``) at ``expected_rev`` (None: no node)."""
    existing = tx.live(key)
    if existing is not None and existing.kind != "file":
        raise Conflict(f"{existing.path} is a folder; cannot write a file there", code="is_a_folder")
    if not check_rev:
        return existing
    current = existing.rev if existing is not None else None
    if current != expected_rev and not (
        existing is not None and expected_rev is not None and same_as_before_share(tx, existing, expected_rev)
    ):
        if existing is None:
            raise Conflict(f"{path} was deleted or moved since revision {expected_rev}", current_rev=None)
        if expected_rev is None:
            raise Conflict(f"{existing.path} already exists (revision {current})", current_rev=current)
        raise Conflict(f"{existing.path} changed: it is at revision {current}, not {expected_rev}", current_rev=current)
    return existing


class FileWrites:
    """The writes of one metadata database (see the module docstring). ``reads`` answers the
    root folder, which has no row to write; ``challenges`` makes the nonces a commit answers
    for chunks it may not use yet."""

    def __init__(
        self, db: Database, challenges: Challenges, reads: FileReads, held: HeldCheck | None = None
    ) -> None:
        self.db = db
        self.challenges = challenges
        self.reads = reads
        self.held = held or self._held_here
        """Answers (hash, size, held) for stored chunks: `_held_here` on the chunk database
        itself; on another shard `cubby.metadata.shardchunks.SplitHeld`."""

    def _held_here(self, tx: NamespaceTxn, part: Sequence[str]) -> Iterable[tuple[str, int, bool]]:
        """`_HELD`, with the ``blocks`` rows share-locked until this transaction commits (on
        PostgreSQL the same statement through the driver, without SQLAlchemy's CPU)."""
        if self.db.dialect == "postgresql":
            params = {"nss": array_text([tx.ns_id, *tx.readable]), "hashes": array_text(part)}
            return driver_execute(tx.conn, HELD_CHUNKS, params).fetchall()  # type: ignore[no-any-return]
        if self.db.is_sqlite:
            return sqlitedriver.held_chunks(tx.conn, [tx.ns_id, *tx.readable], part)
        return tx.conn.execute(_HELD_LOCKED, {"nss": [tx.ns_id, *tx.readable], "hashes": list(part)})  # type: ignore[return-value]

    def _validate_commit(self, req: CommitRequest) -> tuple[str, tuple[ChunkRef, ...]]:
        path = paths.normalize(req.path)
        if path == paths.ROOT:
            raise BadRequest("cannot commit a file at the root itself; give a file name")
        if not isinstance(req.size, int) or req.size < 0:
            raise BadRequest("size must be a non-negative integer")
        if len(req.chunks) > MAX_CHUNKS_PER_FILE:
            raise BadRequest(f"a file may have at most {MAX_CHUNKS_PER_FILE} chunks")
        total = 0
        for c in req.chunks:
            if not isinstance(c.hash, str) or not HASH_RE.match(c.hash):
                raise BadRequest(f"chunk name {str(c.hash)[:80]!r} is not a lowercase hex SHA-256")
            if not isinstance(c.size, int) or not 0 < c.size <= MAX_CHUNK_BYTES:
                raise BadRequest(f"chunk {c.hash} has an impossible size {c.size!r}")
            total += c.size
        if total != req.size:
            raise SizeMismatch(
                f"size {req.size} disagrees with the chunks, which add up to {total} bytes", path=path
            )
        if req.expected_rev is not None and (not isinstance(req.expected_rev, int) or req.expected_rev < 0):
            raise BadRequest("expected_rev must be a revision number or null")
        if req.mode is not None and req.mode not in FILE_MODES:
            raise BadRequest(
                f"mode {req.mode!r} is not one of {', '.join(oct(m) for m in FILE_MODES)} (regular, executable, link)",
                code="bad_mode",
            )
        return path, tuple(req.chunks)

    def _load_chunks(self, tx: NamespaceTxn, hashes: Iterable[str]) -> None:
        """Learn which of ``hashes`` this namespace may use and how big each stored chunk is,
        locking their ``blocks`` rows in share mode so that garbage collection cannot take them
        before this transaction commits: one statement (`_HELD`), the stored chunks with
        whether this namespace or one the caller reads holds each. A chunk counts as usable
        only if it is both held and stored, so a held chunk that is not stored is left out."""
        checked = tx.checked
        wanted = [h for h in hashes if h not in checked]
        if tx.usable is None:
            tx.note_chunks(())
        if not wanted:  # a batch's chunks are all looked up before its first commit
            return
        wanted = sorted(set(wanted))
        tx.checked.update(wanted)
        for i in range(0, len(wanted), 500):
            part = wanted[i : i + 500]
            tx.note_chunks(self.held(tx, part))


    def _prefetch_with_chunks(self, tx: NamespaceTxn, keys: Iterable[str], hashes: Iterable[str]) -> None:
        """``tx.prefetch(keys)``, then `_load_chunks` of ``hashes``: in one statement on a
        PostgreSQL that is its own chunk database (`_held_here`; not on a shard) when each
        fits in one (`cubby.metadata.pgdriver.nodes_and_chunks`), the chunk check's share
        locks taken as before, after the namespace lock."""
        todo = sorted({k for k in keys if k not in tx.cache})
        wanted = sorted({h for h in hashes if h not in tx.checked})
        if (
            self.db.dialect != "postgresql" or self.held != self._held_here
            or not todo or not wanted or len(todo) > 500 or len(wanted) > 500
        ):
            tx.prefetch(todo)
            self._load_chunks(tx, wanted)
            return
        found_nodes, found = nodes_and_chunks(tx.conn, tx.ns_id, todo, [tx.ns_id, *tx.readable], wanted)
        tx.cache.update(dict.fromkeys(todo))
        tx.cache.update((n.path_key, n) for n in found_nodes)
        tx.checked.update(wanted)
        tx.note_chunks(found)

    def _unavailable(self, tx: NamespaceTxn, chunks: tuple[ChunkRef, ...]) -> builtins.list[str]:
        """Chunks this namespace may not use yet, in file order (each once). The caller has
        loaded them (`_load_chunks`): once for a whole batch, not once per file."""
        assert tx.usable is not None and tx.chunk_sizes is not None
        sizes, usable = tx.chunk_sizes, tx.usable
        # One pass: a usable chunk of the wrong size refuses the file whatever comes before it.
        missing: list[str] = []
        seen: set[str] = set()
        for c in chunks:
            h = c.hash
            if h in usable and h in sizes:
                if sizes[h] != c.size:
                    raise SizeMismatch(f"chunk {h} is {sizes[h]} bytes, not {c.size}")
            elif h not in seen:
                missing.append(h)
                seen.add(h)
        return missing

    def _write_file(
        self, tx: NamespaceTxn, path: str, chunks: tuple[ChunkRef, ...], size: int, expected_rev: int | None, mtime: float | None,
        *, check_expected: bool = True, revive: int | None = None, guarded: bool = False, mode: int | None = None,
        key: str | None = None, folders: dict[str, tuple[int, str]] | None = None, texts: tuple[str, str] | None = None,
    ) -> Entry:
        """Write a file revision at ``path``; ``guarded``: the caller has just run
        `guard_mounts` for ``path`` in this transaction, so it is not run again. ``key``:
        ``paths.key(path)``, when the caller has it. ``folders``: the batch's memo of
        `ensure_folder` by parent path (see `commit_many`). ``texts``: `file_texts` of
        ``chunks``, when the caller took them before the lock."""
        if key is None:
            key = paths.key(path)
        if not guarded:
            guard_mounts(tx, path)
        existing = _check_target(tx, path, key, expected_rev, check_rev=check_expected)
        parent, name = paths.split(path)
        made = None if folders is None else folders.get(parent)
        if made is None:
            made = ensure_folder(tx, parent, wanted=path)
            if folders is not None:
                folders[parent] = made
        parent_id, parent_path = made
        path = paths.join(parent_path, name)
        jid = tx.next_jid()
        chash, blocklist = file_texts(chunks) if texts is None else texts
        if existing is not None:
            node_id = int(existing.node_id)
            path = existing.path  # a commit never renames: the first spelling of a name stays
            name = path.rpartition("/")[2]
            op = "edit"
        elif revive is not None:
            node_id = revive  # restoring a deleted file brings back the same node, history and all
            op = "add"
        else:
            node_id = tx.new_node_id()
            op = "add"
        tx.rev_rows.append(
            {
                "ns_id": tx.ns_id,
                "node_id": node_id,
                "rev": jid,
                "path": path,
                "size": size,
                "content_hash": chash,
                "blocklist": blocklist,
                "mtime": mtime,
                "user_id": tx.user_id,
                "created_at": tx.now,
                "mode": mode,
            }
        )
        values = {
            "parent_id": parent_id,
            "name": name,
            "path": path,
            "path_key": key,
            "kind": "file",
            "rev": jid,
            "content_rev": jid,
            "size": size,
            "content_hash": chash,
            "mtime": mtime,
            "deleted": False,
            "deleted_key": None,
            "target_ns": None,  # every column, so that the row is read by one itemgetter (`sqlitedriver.values_of`)
            "pending": None,
            "mode": mode,
        }
        tx.put_node(node_id, values, new=existing is None and revive is None)
        tx.add_refs(c.hash for c in chunks)
        tx.journal(
            op, node_id=node_id, parent_id=parent_id, kind="file", path=path, rev=jid, size=size,
            content_hash=chash, mtime=mtime, mode=mode, name=name, path_key=key,
        )
        return Entry.file(tx.ns_id, node_id, parent_id, path, name, jid, size, chash, mtime, mode)

    def _commit_valid(
        self, tx: NamespaceTxn, req: CommitRequest, path: str, chunks: tuple[ChunkRef, ...], *, prefetched: bool = False,
        guarded: bool = False, key: str | None = None, folders: dict[str, tuple[int, str]] | None = None,
        texts: tuple[str, str] | None = None,
    ) -> CommitResult:
        """Commit ``req`` in ``tx``, once `_validate_commit` has passed it (``path`` and
        ``chunks`` are what it returned). Validation is pure and runs once per request, before
        the namespace lock is taken, so the lock is held only for the work that needs it. The
        nodes at the path and its ancestors (the mount guard's, and the file's own) are read in
        one statement, unless the caller has (``prefetched``: `commit_many`, for its batch).
        ``guarded``: the caller has run `guard_mounts` for a path in the same folder, in this
        transaction. ``key``, ``folders`` and ``texts``: see `_write_file`. The prefetch loads
        the chunks too (`_prefetch_with_chunks`; for a batch, all of its chunks in one pass),
        so a file's chunks are only looked up in what that pass found."""
        if not prefetched:
            self._prefetch_with_chunks(
                tx, [paths.key(a) for a in paths.ancestors(path)] + [paths.key(path)], (c.hash for c in chunks)
            )
        if not guarded:
            guard_mounts(tx, path)
        missing = self._unavailable(tx, chunks)
        if missing:
            # A commit bound to be refused is refused now, not after the client has sent every
            # missing chunk: the checks of `_write_file` that do not depend on the chunks.
            _check_target(tx, path, key or paths.key(path), req.expected_rev)
            check_folders(tx, path)
            uid = tx.user_id or 0
            sizes = {c.hash: c.size for c in chunks}  # the size is bound into the nonce
            bases = self._bases(tx, path, chunks, missing)
            hour = self.challenges.window()  # named in the answer: the proof is checked for it alone
            return CommitResult(
                needed=tuple(
                    NeededChunk(h, self.challenges.nonce(uid, tx.ns_id, h, sizes[h], window=hour), bases.get(h, ()), hour)
                    for h in missing
                )
            )
        return CommitResult.of_entry(
            self._write_file(
                tx, path, chunks, req.size, req.expected_rev, req.mtime, guarded=True, mode=req.mode, key=key,
                folders=folders, texts=texts,
            )
        )

    def _bases(
        self, tx: NamespaceTxn, path: str, chunks: tuple[ChunkRef, ...], missing: Sequence[str]
    ) -> dict[str, tuple[str, ...]]:
        """For the missing chunks of an edit, the old chunks at the same place in the file's
        current version (`delta.pick_bases`): named in the answer, so that the client needs no
        extra request (nor the whole old chunk list) to send them as patches."""
        existing = tx.live(paths.key(path))
        if existing is None or existing.kind != "file" or existing.content_rev is None:
            return {}
        row = tx.conn.execute(
            select(file_revs.c.blocklist).where(
                file_revs.c.ns_id == tx.ns_id, file_revs.c.node_id == existing.node_id, file_revs.c.rev == existing.content_rev
            )
        ).first()
        if row is None:
            return {}
        wanted = set(missing)
        new = [c for c in delta.offsets([(c.hash, c.size) for c in chunks]) if c[0] in wanted]
        return delta.pick_bases(new, delta.offsets([(h, s) for h, s in json.loads(row[0])]))

    def _first_reads(
        self, paths_: Iterable[str], chunks: Iterable[ChunkRef]
    ) -> tuple[list[str], list[str] | None]:
        """The path keys and chunks a commit of files at ``paths_`` reads first: the files'
        own keys and their ancestors' (the mount guard's), and the chunk check's hashes (None
        when the chunk check runs on another database). `write_namespace` reads them with the
        lock where it can (`open_txn`: on PostgreSQL; elsewhere nothing is gathered here, as
        nothing would use it); `_prefetch_with_chunks` then finds them known."""
        if self.db.dialect != "postgresql":
            return [], None
        keys: set[str] = set()
        folders: set[str] = set()
        for path in paths_:
            keys.add(paths.key(path))
            folder = path.rpartition("/")[0]
            if folder not in folders:  # a batch's files share a few folders
                folders.add(folder)
                keys.update(paths.key(a) for a in paths.ancestors(path))
        hashes = sorted({c.hash for c in chunks}) if self.held == self._held_here else None
        return sorted(keys), hashes

    def commit(self, user_id: int, ns_id: int, req: CommitRequest, readable: Iterable[int] = ()) -> CommitResult:
        path, chunks = self._validate_commit(req)
        keys, hashes = self._first_reads([path], chunks)
        return write_namespace(
            self.db, ns_id, user_id, lambda tx: self._commit_valid(tx, req, path, chunks), readable,
            keys=keys, hashes=hashes,
        )

    def commit_many(
        self, user_id: int, ns_id: int, reqs: Sequence[CommitRequest], readable: Iterable[int] = ()
    ) -> builtins.list[CommitResult | CubbyError]:
        # Validation needs no transaction: each request is checked once, before the lock.
        valid: list[tuple[str, tuple[ChunkRef, ...]] | CubbyError] = []
        for req in reqs:
            try:
                valid.append(self._validate_commit(req))
            except CubbyError as exc:
                valid.append(exc)

        # Each file's key, content hash and blocklist text, taken once here, before the lock,
        # and handed down to its rows (node, revision, journal).
        file_keys = [None if isinstance(v, CubbyError) else paths.key(v[0]) for v in valid]
        texts = [None if isinstance(v, CubbyError) else file_texts(v[1]) for v in valid]

        def run(tx: NamespaceTxn) -> list[CommitResult | CubbyError]:
            out: list[CommitResult | CubbyError] = []
            keys: set[str] = set()
            hashes: set[str] = set()
            folders: set[str] = set()
            for v, k in zip(valid, file_keys):
                if isinstance(v, CubbyError):
                    continue
                path, chunks = v
                keys.add(k)  # type: ignore[arg-type]
                folder = path.rpartition("/")[0]
                if folder not in folders:  # a batch's files share a few folders
                    folders.add(folder)
                    keys.update(paths.key(a) for a in paths.ancestors(path))
                hashes.update(c.hash for c in chunks)
            self._prefetch_with_chunks(tx, keys, hashes)
            # `guard_mounts` depends on the folder alone, and nothing a commit writes (a file,
            # plain folders) can make a folder a mount or frozen: once per folder of the batch.
            # Likewise `ensure_folder`: a folder it found or made stays that folder for the
            # rest of the transaction (a commit never writes a file over a folder), so its
            # answer is remembered by parent path (``made``) and asked once per folder.
            clear: set[str] = set()
            made: dict[str, tuple[int, str]] = {}
            for req, v, k, t in zip(reqs, valid, file_keys, texts):
                if isinstance(v, CubbyError):
                    out.append(v)
                    continue
                try:
                    folder = v[0].rpartition("/")[0]
                    if folder not in clear:
                        guard_mounts(tx, v[0])
                        clear.add(folder)
                    out.append(self._commit_valid(
                        tx, req, *v, prefetched=True, guarded=True, key=k, folders=made, texts=t
                    ))
                except CubbyError as exc:
                    # Nothing of a refused commit was written: every check precedes every write.
                    out.append(exc)
            return out

        keys, hashes = self._first_reads(
            (v[0] for v in valid if not isinstance(v, CubbyError)),
            (c for v in valid if not isinstance(v, CubbyError) for c in v[1]),
        )
        return write_namespace(self.db, ns_id, user_id, run, readable, keys=keys, hashes=hashes)

    def mkdir(self, user_id: int, ns_id: int, path: str) -> Entry:
        path = paths.normalize(path)
        if path == paths.ROOT:
            return self.reads.stat(ns_id, path)

        def run(tx: NamespaceTxn) -> Entry:
            guard_mounts(tx, path)
            ensure_folder(tx, path)
            tx.flush()
            tx.forget()
            row = tx.live(paths.key(path))
            assert row is not None
            return entry_of(row)

        return write_namespace(self.db, ns_id, user_id, run)

    def mkdir_many(self, user_id: int, ns_id: int, paths_: Sequence[str]) -> builtins.list[Entry | CubbyError]:
        """Many folders in one transaction (a first sync of a tree creates thousands); each
        gets its own outcome. A refused folder writes nothing: `ensure_folder` raises at the
        first existing non-folder ancestor, before it creates anything below it."""
        wanted: list[str | CubbyError] = []
        for raw in paths_:
            try:
                wanted.append(paths.normalize(raw))
            except CubbyError as exc:
                wanted.append(exc)
        # The folders' keys and their ancestors', each folder's chain walked up only until it
        # meets a folder already counted (whose ancestors are counted with it): a tree's
        # folders share most of their ancestors.
        keys: set[str] = set()
        for w in wanted:
            if isinstance(w, str):
                while w != paths.ROOT and (k := paths.key(w)) not in keys:
                    keys.add(k)
                    w = w.rpartition("/")[0] or paths.ROOT

        def run(tx: NamespaceTxn) -> list[Entry | CubbyError | str]:
            tx.prefetch(keys)
            made: list[str | CubbyError] = []
            # `guard_mounts` depends on the parent folder alone, and nothing made here (plain
            # folders) can make a folder a mount or frozen: once per parent, as in `commit_many`.
            clear: set[str] = set()
            for w in wanted:
                if isinstance(w, CubbyError) or w == paths.ROOT:
                    made.append(w)
                    continue
                try:
                    parent = w.rpartition("/")[0]
                    if parent not in clear:
                        guard_mounts(tx, w)
                        clear.add(parent)
                    ensure_folder(tx, w)
                    made.append(w)
                except CubbyError as exc:
                    made.append(exc)
            tx.flush()
            # Each folder's row is in the transaction's cache: read by the prefetch, or the
            # record `ensure_folder` wrote (`entry_of` reads either), so none is read again.
            out: list[Entry | CubbyError | str] = []
            for m in made:
                if isinstance(m, CubbyError):
                    out.append(m)
                    continue
                row = tx.live(paths.key(m)) if m != paths.ROOT else None
                out.append(entry_of(row) if row is not None else m)
            return out

        # the root has no row of its own: it is answered as `mkdir` answers it, by a stat
        return [self.reads.stat(ns_id, r) if isinstance(r, str) else r for r in write_namespace(self.db, ns_id, user_id, run)]

    def delete(
        self,
        user_id: int,
        ns_id: int,
        path: str,
        expected_rev: int | None = None,
        *,
        forget_through: int | None = None,
        unchanged_since: int | None = None,
    ) -> Entry:
        """Delete ``path`` (see the Protocol). With ``forget_through``, also forget the deleted
        files' revisions up to that journal id: a shared folder's server passes its cut when
        it retries a delete that raced the share, so that a delete its client issued before
        the share was acknowledged leaves no history a member could open.

        With ``unchanged_since`` (a journal id the caller has read up to), a folder is deleted
        only if nothing below it changed after that id: ``expected_rev`` covers the folder
        node alone, and a sync client deleting a folder must not take with it a file another
        client just added or edited there (the edit wins; the client re-plans)."""
        path = paths.normalize(path)
        if path == paths.ROOT:
            raise BadRequest("the root cannot be deleted")

        def run(tx: NamespaceTxn) -> Entry:
            key = paths.key(path)
            guard_mounts(tx, path)
            row = tx.live(key)
            if row is None:
                raise NotFound(f"{path} does not exist")
            if expected_rev is not None and row.rev != expected_rev and not same_as_before_share(tx, row, expected_rev):
                raise Conflict(f"{row.path} changed: it is at revision {row.rev}, not {expected_rev}", current_rev=row.rev)
            if row.kind == "mount":
                raise Conflict(
                    f"{row.path} is a shared folder: leave it ('cubby share leave') or, as its owner, unshare it",
                    code="is_shared_folder",
                )
            if row.kind == "folder" and unchanged_since is not None:
                lo, hi = key_range(key)
                newer = tx.conn.execute(
                    select(nodes.c.path)
                    .where(
                        nodes.c.ns_id == tx.ns_id, nodes.c.path_key > lo, nodes.c.path_key < hi,
                        nodes.c.rev > unchanged_since,
                    )
                    .limit(1)
                ).first()
                if newer is not None:
                    raise Conflict(
                        f"{row.path} changed after revision {unchanged_since} ({newer.path}): nothing was deleted",
                        code="folder_changed",
                    )
            if is_frozen(row):
                raise NamespaceMoved(f"{row.path} is becoming a shared folder; retry in a moment", path=row.path)
            if row.kind == "folder" and frozen_or_mount_below(tx, key):
                raise Conflict(
                        f"{row.path} holds a shared folder: leave or unshare it first", code="contains_shared_folder"
                    )
            jid = remove_node(tx, row)
            through = forget_through if forget_through is not None else settling_cut(tx)
            if through is not None:
                self._forget_revisions(tx, key, row, through)
            e = entry_of(row)
            return Entry(**{**e.to_dict(), "rev": jid, "deleted": True})

        return write_namespace(self.db, ns_id, user_id, run)

    def _forget_revisions(self, tx: NamespaceTxn, key: str, row: Any, through: int) -> None:
        """Drop the revisions up to ``through`` of the file ``row`` (or of every file below the
        folder at ``key``, just deleted) with their chunk references."""
        if row.kind == "file":
            ids = [int(row.node_id)]
        else:
            lo, hi = key_range(key)
            ids = [
                int(r[0])
                for r in tx.conn.execute(
                    select(nodes.c.node_id).where(
                        nodes.c.ns_id == tx.ns_id, nodes.c.kind == "file", nodes.c.deleted_key > lo, nodes.c.deleted_key < hi
                    )
                )
            ]
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            cond = (file_revs.c.ns_id == tx.ns_id, file_revs.c.node_id.in_(part), file_revs.c.rev <= through)
            for fr in tx.conn.execute(select(file_revs.c.blocklist).where(*cond)):
                for h in {c[0] for c in json.loads(fr.blocklist)}:
                    tx.ref_counts[h] = tx.ref_counts.get(h, 0) - 1
            tx.conn.execute(delete(file_revs).where(*cond))

    def move(self, user_id: int, ns_id: int, src: str, dst: str, expected_rev: int | None = None) -> Entry:
        src, dst = paths.normalize(src), paths.normalize(dst)
        if paths.ROOT in (src, dst):
            raise BadRequest("the root cannot be moved, nor anything moved onto it")
        same_key = paths.key(src) == paths.key(dst)
        if not same_key and paths.is_within(dst, src):
            raise BadRequest(f"cannot move {src} into itself ({dst})")

        def run(tx: NamespaceTxn) -> Entry:
            guard_mounts(tx, src)
            guard_mounts(tx, dst)
            row = tx.live(paths.key(src))
            if row is None:
                raise NotFound(f"{src} does not exist")
            if expected_rev is not None and row.rev != expected_rev and not same_as_before_share(tx, row, expected_rev):
                raise Conflict(f"{row.path} changed: it is at revision {row.rev}, not {expected_rev}", current_rev=row.rev)
            if not same_key and tx.live(paths.key(dst)) is not None:
                raise Conflict(f"{dst} already exists", code="destination_exists")
            parent, name = paths.split(dst)
            parent_id, parent_path = ensure_folder(tx, parent, wanted=dst)
            dst_path = paths.join(parent_path, name)
            if same_key and row.path == dst_path:
                return entry_of(row)
            jid = tx.next_jid()
            old_path = row.path
            tx.flush()  # the statements below read and write the tables directly
            if row.kind == "folder":
                lo, hi = key_range(paths.key(src))
                kids = tx.conn.execute(
                    select(nodes.c.node_id, nodes.c.path).where(
                        nodes.c.ns_id == tx.ns_id, nodes.c.path_key > lo, nodes.c.path_key < hi
                    )
                ).all()
                # Free the old keys first, so that a case-only rename never collides with itself.
                params = []
                for k in kids:
                    new = paths.check_length(paths.rebase(k.path, old_path, dst_path))
                    params.append({"nid": k.node_id, "p": new, "k": paths.key(new)})
                if params:
                    stmt = update(nodes).where(nodes.c.ns_id == tx.ns_id, nodes.c.node_id == bindparam("nid"))
                    tx.conn.execute(stmt.values(path_key=None), [{"nid": p["nid"]} for p in params])
                    tx.conn.execute(stmt.values(path=bindparam("p"), path_key=bindparam("k")), params)
            tx.conn.execute(
                update(nodes)
                .where(nodes.c.ns_id == tx.ns_id, nodes.c.node_id == row.node_id)
                .values(parent_id=parent_id, name=name, path=dst_path, path_key=paths.key(dst), rev=jid)
            )
            tx.journal(
                "move", node_id=row.node_id, parent_id=parent_id, kind=row.kind, path=dst_path, rev=jid,
                size=row.size, content_hash=row.content_hash, mtime=row.mtime, mode=row.mode,
                old_path=old_path, old_parent_id=row.parent_id,
            )
            tx.forget()
            moved = tx.live(paths.key(dst))
            assert moved is not None
            return entry_of(moved)

        return write_namespace(self.db, ns_id, user_id, run)

    def restore(self, user_id: int, ns_id: int, path: str, rev: int) -> Entry:
        path = paths.normalize(path)

        def run(tx: NamespaceTxn) -> Entry:
            node_id = node_for_history(tx.conn, ns_id, path)
            fr = tx.conn.execute(
                select(file_revs).where(
                    file_revs.c.ns_id == ns_id, file_revs.c.node_id == node_id, file_revs.c.rev == int(rev)
                )
            ).first()
            if fr is None:
                raise NotFound(f"{path} has no revision {rev}: see 'cubby history {path}'")
            chunks = tuple(ChunkRef(h, s) for h, s in json.loads(fr.blocklist))
            live = tx.live(paths.key(path))
            revive = None if live is not None else node_id
            return self._write_file(
                tx, path, chunks, fr.size, None, fr.mtime, check_expected=False, revive=revive, mode=fr.mode
            )

        return write_namespace(self.db, ns_id, user_id, run)


__all__ = ["MAX_CHUNKS_PER_FILE", "MAX_CHUNK_BYTES", "FileWrites", "content_hash_of", "file_texts"]

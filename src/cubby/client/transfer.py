"""Moving files in and out: upload with deduplication and proof of possession, resumable
download, and whole trees with batched commits.

How an upload spends its work (each byte of a new file is read at most twice and hashed by the
client at most twice: once to name it, once for the proof of possession):

- a first pass names the chunks (FastCDC, one SHA-256 per chunk while reading). A small file's
  bytes are kept from this pass (`KEEP_BYTES`), so it is never read again; a large file keeps
  only its chunk list, so memory stays bounded whatever the size;
- the server answers a commit with the chunks it needs; those are read again (large files) a
  window of `UPLOAD_WINDOW` at a time, the window's proofs are computed from those bytes,
  and the chunks whose proof is rejected are uploaded from the same bytes, never read again;
- windows are pipelined: the next window is read and hashed while at most `IN_FLIGHT` earlier
  ones are with the server, so client and server work at the same time.

A large file read again must be the file that was named. The client checks that by comparing
the file's stat stamp (size, mtime, ctime, inode) before and after each window with the one
taken when it was named, and hashes the chunks again only when the stamp differs or is unknown
(a `LocalFile` made elsewhere, e.g. from the sync state). It needs no more: the server verifies
every uploaded chunk against its name before storing it, and a proof computed over other bytes
is rejected, so bytes that changed in the same clock tick as the stamp still cannot be
committed; they end the upload with `FileChanged` rather than commit a mix of two versions.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Self, TypeVar

from cubby.client import modes
from cubby.client.api import ApiClient, commit_body
from cubby.client.windows import (
    BATCH,
    DOWNLOAD_WINDOW,
    GROUP_BYTES,
    IN_FLIGHT,
    KEEP_BYTES,
    MAX_WINDOW_CHUNKS,
    SMALL_FILE,
    UPLOAD_WINDOW,
)
from cubby.core import delta, durable, paths
from cubby.core.chunking import MIN_SIZE, chunk_file, iter_chunks
from cubby.core.hashing import content_hash, sha256_hex
from cubby.errors import BadRequest, ChunkMismatch, Conflict, CubbyError, NotFound, Unavailable
from cubby.model import ChunkRef, CommitResult, Entry

Progress = Callable[[int], None]
"""Called with a number of bytes done, as work advances (possibly from a worker thread)."""

class FileChanged(CubbyError):
    code = "file_changed"
    status = 409
    retryable = True


@dataclass(frozen=True)
class LocalChunk:
    offset: int
    size: int
    hash: str


Stamp = tuple[int, int, int, int]
"""(size, mtime_ns, ctime_ns, inode): any write to a file changes at least one of these."""


def _stamp(st: os.stat_result) -> Stamp:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@dataclass
class LocalFile:
    """A local file named for upload: where it is, its chunks, and what it was when hashed.

    ``stamp`` is the file's stat stamp while it was named (None: unknown, so its chunks are
    hashed again when read back); ``data`` is the whole file's bytes when they were kept."""

    local: Path
    remote: str
    size: int
    mtime: float
    chunks: list[LocalChunk]
    inode: int = 0
    stamp: Stamp | None = None
    data: bytes | None = field(default=None, repr=False)
    mode: int | None = None
    """`cubby.client.modes`: regular, executable, or a link (whose ``data`` is its target)."""

    @property
    def refs(self) -> tuple[ChunkRef, ...]:
        return tuple(ChunkRef(c.hash, c.size) for c in self.chunks)

    @property
    def content_hash(self) -> str:
        return content_hash(c.hash for c in self.chunks)


@dataclass
class UploadResult:
    path: str
    rev: int
    size: int
    chunks: int
    chunks_sent: int
    bytes_sent: int
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class DownloadResult:
    path: str
    size: int
    bytes_received: int
    local: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Needs:
    """Chunks the server asked for across one or more commits, with where to read them."""

    where: dict[str, tuple[Path, LocalChunk]] = field(default_factory=dict)
    nonces: dict[str, str] = field(default_factory=dict)
    files: dict[Path, LocalFile] = field(default_factory=dict)
    """The file each chunk is read from (for its stamp and kept bytes); absent: hash to check."""
    bases: dict[str, str] = field(default_factory=dict)
    """An old chunk on the server to send a needed chunk as a patch against (the commit
    answer names it: the chunk at the same place in the version being replaced)."""


DELTA_MIN = MIN_SIZE
"""Files smaller than one minimal chunk are downloaded whole: a delta saves little on them."""


def _send_patches(api: ApiClient, ns_id: int, items: list[tuple[str, bytes]], bases: dict[str, str]) -> dict[str, int]:
    """Send ``items`` that have a base as patches; returns the bytes sent per chunk stored so.
    Anything the server will not take as a patch (its base is gone, a refused patch) is left
    for the caller to upload whole: a patch is an optimisation, never a requirement."""
    with_base = [(n, d) for n, d in items if n in bases and len(d) >= delta.PATCH_MIN]
    if not with_base:
        return {}
    try:
        sigs = api.signatures(sorted({bases[n] for n, _ in with_base}))
        triples = []
        for n, d in with_base:
            sig = sigs.get(bases[n])
            if sig is not None:
                p = delta.patch(sig, d)
                if len(p) + len(sig) < len(d):
                    triples.append((n, bases[n], p))
        if triples:
            api.upload_patches(ns_id, triples)
    except Unavailable:
        raise
    except CubbyError:
        return {}
    return {n: len(p) + len(sigs[b]) for n, b, p in triples}


def scan_file(local: Path, remote: str, progress: Progress | None = None, *, keep_up_to: int = 0) -> LocalFile:
    """Name a file's chunks in one read. Files of at most ``keep_up_to`` bytes keep their bytes
    (`LocalFile.data`), so that an upload never reads them again."""
    local = Path(local)
    st = local.stat()
    chunks: list[LocalChunk] = []
    data: bytes | None = None
    if st.st_size <= keep_up_to:
        with open(local, "rb", buffering=0) as fh:
            data = fh.read(st.st_size + 1)  # one byte more: a file that grew is caught below
        if 0 < len(data) <= MIN_SIZE:
            # FastCDC never cuts below MIN_SIZE, so such a file is one chunk: skip the chunker
            # (and its window allocation), which costs more than hashing a 4 KiB file.
            chunks.append(LocalChunk(0, len(data), sha256_hex(data)))
        else:
            chunks.extend(LocalChunk(c.offset, c.length, c.hash) for c in iter_chunks(io.BytesIO(data), with_data=False))
        if progress and chunks:
            progress(len(data))
    else:
        for c in chunk_file(local, with_data=False):
            chunks.append(LocalChunk(c.offset, c.length, c.hash))
            if progress:
                progress(c.length)  # a large file's bar moves while it is hashed
    after = local.stat()
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or (data is not None and len(data) != st.st_size):
        raise FileChanged(f"{local} changed while it was being read; try again when it is saved")
    stamp = _stamp(after) if _stamp(after) == _stamp(st) else None
    return LocalFile(local, remote, st.st_size, st.st_mtime, chunks, st.st_ino, stamp, data, modes.mode_of(after))


def _same(e: Entry, lf: LocalFile) -> bool:
    """Does the server's file already hold what ``lf`` would commit (bytes and mode)?"""
    return e.content_hash == lf.content_hash and e.size == lf.size and modes.version("", e.mode) == modes.version("", lf.mode)


def read_chunk(fh: BinaryIO, c: LocalChunk, where: Path) -> bytes:
    """Read one chunk back and check it still hashes to its name (for files with no stamp)."""
    fh.seek(c.offset)
    data = fh.read(c.size)
    if len(data) != c.size or sha256_hex(data) != c.hash:
        raise FileChanged(f"{where} changed during the upload; run the command again")
    return data


def _changed(where: Path) -> FileChanged:
    return FileChanged(f"{where} changed during the upload; run the command again")


def _read_from(path: Path, lf: LocalFile | None, wanted: list[tuple[str, LocalChunk]]) -> list[tuple[str, bytes]]:
    """The bytes of ``wanted`` chunks of one file, checked to be the bytes that were named:
    from memory when kept; else read, trusted when the file's stamp is the one taken when it
    was named (before and after reading), otherwise hashed once and compared."""
    if lf is not None and lf.data is not None:
        kept = lf.data
        if len(wanted) == 1 and wanted[0][1].offset == 0 and wanted[0][1].size == len(kept):
            return [(wanted[0][0], kept)]  # a small file is one chunk: no copy
        view = memoryview(kept)
        return [(name, bytes(view[c.offset : c.offset + c.size])) for name, c in wanted]
    out: list[tuple[str, bytes]] = []
    with open(path, "rb", buffering=0) as fh:
        before = _stamp(os.fstat(fh.fileno()))
        for name, c in wanted:
            fh.seek(c.offset)
            data = fh.read(c.size)
            if len(data) != c.size:
                raise _changed(path)
            out.append((name, data))
        after = _stamp(os.fstat(fh.fileno()))
    stamp = lf.stamp if lf is not None else None
    if stamp is None or before != stamp or after != stamp:
        for (_name, c), (_, data) in zip(wanted, out):
            if sha256_hex(data) != c.hash:
                raise _changed(path)
    return out


def _read_window(needs: _Needs, names: Sequence[str]) -> list[tuple[str, bytes]]:
    """Read a window of needed chunks (given in file order), one open per file."""
    out: list[tuple[str, bytes]] = []
    i = 0
    while i < len(names):
        path = needs.where[names[i]][0]
        j = i
        while j < len(names) and needs.where[names[j]][0] == path:
            j += 1
        out.extend(_read_from(path, needs.files.get(path), [(n, needs.where[n][1]) for n in names[i:j]]))
        i = j
    return out


def _read_many(wanted: Iterable[tuple[str, tuple[Path, LocalChunk]]]) -> Iterator[tuple[str, bytes]]:
    """Read chunks from their files, hashing each to check it (kept for callers outside)."""
    current: Path | None = None
    fh: BinaryIO | None = None
    try:
        for name, (path, c) in sorted(wanted, key=lambda kv: (str(kv[1][0]), kv[1][1].offset)):
            if path != current:
                if fh:
                    fh.close()
                fh = open(path, "rb")  # noqa: SIM115 -- one file at a time, closed on switch and in finally
                current = path
            assert fh is not None
            yield name, read_chunk(fh, c, path)
    finally:
        if fh:
            fh.close()


def _windows(needs: _Needs) -> Iterator[list[str]]:
    """Needed chunk names in read order (by file, then offset), cut into bounded windows."""
    names = sorted(needs.where, key=lambda n: (str(needs.where[n][0]), needs.where[n][1].offset))
    window: list[str] = []
    size = 0
    for n in names:
        window.append(n)
        size += needs.where[n][1].size
        if size >= UPLOAD_WINDOW or len(window) >= MAX_WINDOW_CHUNKS:
            yield window
            window, size = [], 0
    if window:
        yield window


T = TypeVar("T")


class _Pipeline:
    """At most ``depth`` tasks running on worker threads while the caller prepares the next;
    results come back in submission order. An error cancels what has not started and is
    raised to the caller."""

    def __init__(self, depth: int) -> None:
        self.depth = max(1, depth)
        self.pool = ThreadPoolExecutor(self.depth)
        self.pending: deque[Future[Any]] = deque()

    def submit(self, fn: Callable[[], T]) -> list[T]:
        """Start ``fn``; returns the results of earlier tasks that had to finish to make room."""
        done = []
        while len(self.pending) >= self.depth:
            done.append(self.pending.popleft().result())
        self.pending.append(self.pool.submit(fn))
        return done

    def drain(self) -> list[Any]:
        done = []
        while self.pending:
            done.append(self.pending.popleft().result())
        return done

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=exc_type is not None)


def _proof(nonce: str, data: bytes) -> str:
    """SHA-256 of nonce || data, without copying ``data`` into a concatenation first."""
    h = hashlib.sha256(bytes.fromhex(nonce))
    h.update(data)
    return h.hexdigest()


def supply(
    api: ApiClient, ns_id: int, needs: _Needs, progress: Progress | None = None, *, in_flight: int = IN_FLIGHT
) -> dict[Path, tuple[int, int]]:
    """Give the server every needed chunk: prove possession where it already holds the bytes,
    upload the rest. Returns (chunks sent, bytes sent) per local file.

    Window by window: this thread reads the chunks (once) and computes their proofs; a worker
    sends the proofs and then uploads the rejected chunks from the same bytes, while this
    thread goes on with the next window (at most ``in_flight`` windows with the server)."""
    if not needs.where:
        return {}
    owner = {n: w[0] for n, w in needs.where.items()}

    def send(items: list[tuple[str, bytes]], proofs: dict[str, tuple[int, str]]) -> list[tuple[str, int]]:
        rejected: set[str] = set(api.prove(ns_id, proofs)[1])
        batch = [(n, d) for n, d in items if n in rejected]
        patched = _send_patches(api, ns_id, batch, needs.bases)
        batch = [(n, d) for n, d in batch if n not in patched]
        try:
            api.upload_chunks(ns_id, batch)
        except ChunkMismatch as exc:
            # The server hashed bytes read from a file that changed in the same clock tick as
            # its stamp: nothing of this window was stored under a wrong name.
            raise FileChanged(f"a file changed during the upload; run the command again ({exc.message})") from exc
        return [(n, len(d)) for n, d in batch] + list(patched.items())

    credit: dict[Path, tuple[int, int]] = {}

    def account(sent: list[tuple[str, int]]) -> None:
        for name, n in sent:
            s, b = credit.get(owner[name], (0, 0))
            credit[owner[name]] = (s + 1, b + n)
        if progress and sent:
            progress(sum(n for _, n in sent))

    with _Pipeline(in_flight) as pipe:
        for window in _windows(needs):
            items = _read_window(needs, window)
            proofs = {n: (len(d), _proof(needs.nonces[n], d)) for n, d in items}
            for sent in pipe.submit(lambda items=items, proofs=proofs: send(items, proofs)):  # type: ignore[misc]
                account(sent)
        for sent in pipe.drain():
            account(sent)
    return credit


def upload_file(
    api: ApiClient,
    local: Path,
    remote: str,
    *,
    expected_rev: int | None = None,
    overwrite: bool = True,
    progress: Progress | None = None,
) -> UploadResult:
    """Upload one file. With ``overwrite`` (and no ``expected_rev``), replace whatever file is
    at ``remote`` now; a change racing us is still refused as a conflict."""
    lf = scan_file(Path(local), remote, progress, keep_up_to=KEEP_BYTES)
    if expected_rev is None and overwrite:
        try:
            current = api.stat(remote)
            if current.kind == "file":
                if _same(current, lf):
                    return UploadResult(current.path, current.rev, lf.size, len(lf.chunks), 0, 0, skipped=True)
                expected_rev = current.rev
        except NotFound:
            pass
    sent = sent_bytes = 0
    ns_id: int | None = None
    for _attempt in range(3):
        res = api.commit(remote, lf.size, lf.refs, expected_rev, lf.mtime, lf.mode)
        if res.entry is not None:
            return UploadResult(res.entry.path, res.entry.rev, lf.size, len(lf.chunks), sent, sent_bytes)
        if ns_id is None:
            ns_id = _ns_of(api, remote)
        for s, b in supply(api, ns_id, _needs_for([(lf, res)]), progress).values():
            sent += s
            sent_bytes += b
    raise CubbyError(f"the server kept asking for chunks of {remote}; giving up", code="upload_incomplete")


def _needs_for(pairs: Sequence[tuple[LocalFile, CommitResult]]) -> _Needs:
    needs = _Needs()
    for lf, res in pairs:
        by_hash = {c.hash: c for c in lf.chunks}
        for n in res.needed:
            if n.hash in by_hash and n.hash not in needs.where:
                needs.where[n.hash] = (lf.local, by_hash[n.hash])
                needs.nonces[n.hash] = n.nonce
                if n.base is not None:
                    needs.bases[n.hash] = n.base
                needs.files.setdefault(lf.local, lf)
    return needs


def _ns_of(api: ApiClient, remote: str) -> int:
    """The namespace a remote path lives in: the deepest mount that contains it."""
    best, ns = "", 0
    for n in api.account()["namespaces"]:
        if paths.is_within(paths.normalize(remote), n["path"]) and len(n["path"]) > len(best):
            best, ns = n["path"], int(n["ns_id"])
    return ns


def walk(local_dir: Path) -> tuple[list[Path], list[Path]]:
    """Files and folders below ``local_dir`` (symlinks are not followed), in a stable order."""
    files: list[Path] = []
    dirs: list[Path] = []
    for root, dnames, fnames in os.walk(local_dir):
        dnames.sort()
        for d in dnames:
            dirs.append(Path(root) / d)
        for f in sorted(fnames):
            p = Path(root) / f
            if p.is_file() and not p.is_symlink():
                files.append(p)
    return files, dirs


def _groups(files: list[Path]) -> Iterator[list[Path]]:
    """Files in groups of at most `BATCH` files and about `GROUP_BYTES` of kept bytes;
    a file too large to keep travels alone (its chunks are windowed by `supply`)."""
    group: list[Path] = []
    size = 0
    for p in files:
        try:
            n = p.stat().st_size
        except FileNotFoundError:
            n = 0  # gone since the walk: scan_file reports it
        if n > KEEP_BYTES:
            if group:
                yield group
                group, size = [], 0
            yield [p]
            continue
        group.append(p)
        size += n
        if len(group) >= BATCH or size >= GROUP_BYTES:
            yield group
            group, size = [], 0
    if group:
        yield group


def upload_tree(
    api: ApiClient,
    local_dir: Path,
    remote_dir: str,
    *,
    progress: Progress | None = None,
    on_result: Callable[[UploadResult], None] | None = None,
    workers: int = 4,
) -> list[UploadResult]:
    """Upload a folder: name files a group at a time (small files keep their bytes, so they
    are read once), commit each group in one request, prove or upload the chunks the server
    asks for in a few large requests, and commit again. Naming runs ahead of sending, and up to
    `IN_FLIGHT` groups are with the server at once. Files whose content the server already has
    at the same path are skipped. ``on_result`` is called on this thread, in group order."""
    local_dir = Path(local_dir)
    remote_dir = paths.normalize(remote_dir)
    files, dirs = walk(local_dir)
    existing: dict[str, Entry] = {}
    try:
        for e in api.list(remote_dir, recursive=True):
            existing[paths.key(e.path)] = e
    except NotFound:
        pass

    def remote_of(p: Path) -> str:
        rel = p.relative_to(local_dir).as_posix()
        return paths.join(remote_dir, rel)

    def name_group(group: list[Path]) -> list[LocalFile]:
        return [scan_file(p, remote_of(p), progress, keep_up_to=KEEP_BYTES) for p in group]

    ns_id = _ns_of(api, remote_dir) if files else 0

    def send_group(scanned: list[LocalFile]) -> list[UploadResult]:
        out: list[UploadResult] = []
        pending: list[LocalFile] = []
        for lf in scanned:
            cur = existing.get(paths.key(lf.remote))
            if cur is not None and cur.kind == "file" and _same(cur, lf):
                out.append(UploadResult(cur.path, cur.rev, lf.size, len(lf.chunks), 0, 0, skipped=True))
            else:
                pending.append(lf)
        sent_by_file: dict[Path, tuple[int, int]] = {}
        for _attempt in range(3):
            if not pending:
                return out
            bodies = []
            for lf in pending:
                cur = existing.get(paths.key(lf.remote))
                rev = cur.rev if cur is not None and cur.kind == "file" else None
                bodies.append(commit_body(lf.remote, lf.size, lf.refs, rev, lf.mtime, lf.mode))
            outcomes = api.commit_batch(bodies)
            needing: list[tuple[LocalFile, CommitResult]] = []
            for lf, res in zip(pending, outcomes):
                if isinstance(res, CubbyError):
                    raise res.__class__(f"{lf.remote}: {res.message}", code=res.code)
                if res.entry is not None:
                    s, b = sent_by_file.get(lf.local, (0, 0))
                    out.append(UploadResult(res.entry.path, res.entry.rev, lf.size, len(lf.chunks), s, b))
                else:
                    needing.append((lf, res))
            if not needing:
                return out
            for owner, (s, b) in supply(api, ns_id, _needs_for(needing), progress).items():
                prev = sent_by_file.get(owner, (0, 0))
                sent_by_file[owner] = (prev[0] + s, prev[1] + b)
            pending = [lf for lf, _ in needing]
        raise CubbyError("the server kept asking for chunks; giving up", code="upload_incomplete")

    results: list[UploadResult] = []

    def emit(done: list[list[UploadResult]]) -> None:
        for group_results in done:
            for r in group_results:
                results.append(r)
                if on_result:
                    on_result(r)

    # Naming runs up to `ahead` groups ahead (one group per task: a task per 4 KiB file costs
    # more than hashing it), and sending keeps `IN_FLIGHT` groups with the server; so at most
    # ``ahead + 1 + IN_FLIGHT`` groups' kept bytes are in memory.
    ahead = max(1, min(workers, 2))
    with ThreadPoolExecutor(ahead + 1) as namer, _Pipeline(IN_FLIGHT) as sender:
        named: deque[Future[list[LocalFile]]] = deque()
        try:
            for group in _groups(files):
                named.append(namer.submit(name_group, group))
                if len(named) > ahead:
                    scanned = named.popleft().result()
                    emit(sender.submit(lambda s=scanned: send_group(s)))  # type: ignore[misc]
            while named:
                scanned = named.popleft().result()
                emit(sender.submit(lambda s=scanned: send_group(s)))  # type: ignore[misc]
            emit(sender.drain())
        except BaseException:
            for f in named:
                f.cancel()
            raise
    made = {paths.key(paths.split(r.path)[0]) for r in results}
    for d in dirs:
        remote = remote_of(d)
        key = paths.key(remote)
        if key not in made and key not in existing and not any(k.startswith(key + "/") for k in made):
            api.mkdir(remote)
    if not files and not dirs:
        api.mkdir(remote_dir)
    return results


# ------------------------------------------------------------------------------------------------
# download
# ------------------------------------------------------------------------------------------------
def _part_paths(target: Path) -> tuple[Path, Path]:
    part = target.with_name(f".{target.name}.cubby-part")
    return part, part.with_name(part.name + ".json")


def verified_prefix(part: Path, chunks: Sequence[ChunkRef], progress: Progress | None = None) -> int:
    """How many leading chunks of an interrupted download's part file are right (each
    re-hashed: a part file is only a hint, never trusted)."""
    keep = 0
    try:
        with open(part, "rb") as fh:
            for c in chunks:
                data = fh.read(c.size)
                if len(data) != c.size or sha256_hex(data) != c.hash:
                    break
                keep += 1
                if progress:
                    progress(c.size)
    except FileNotFoundError:
        pass
    return keep


def download_file(
    api: ApiClient, remote: str, local: Path, *, rev: int | None = None, progress: Progress | None = None
) -> DownloadResult:
    """Download a file to ``local`` through a part file beside it; run again after an
    interruption, it keeps the chunks already written (checked by hashing them) and fetches
    only the rest. The file appears under its name only when whole, with the server's mtime."""
    entry, chunks = api.blocklist(remote, rev)
    local = Path(local)
    local.parent.mkdir(parents=True, exist_ok=True)
    part, meta = _part_paths(local)
    keep = 0  # chunks of the part file that are already right
    if part.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
        except ValueError:
            info = {}
        if info.get("content_hash") == entry.content_hash:
            keep = verified_prefix(part, chunks, progress)
    meta.write_text(json.dumps({"content_hash": entry.content_hash, "rev": entry.rev, "path": remote}))
    received = 0
    offset = sum(c.size for c in chunks[:keep])
    mode = "r+b" if part.exists() and keep else "wb"
    with open(part, mode) as out:
        out.seek(offset)
        out.truncate()
        rest = chunks[keep:]
        i = 0
        while i < len(rest):
            # A window of at most DOWNLOAD_WINDOW bytes of distinct chunks (memory stays
            # bounded whatever the file), each fetched once however often it occurs.
            window: list[ChunkRef] = []
            distinct: dict[str, None] = {}
            size = 0
            while i < len(rest) and (not window or rest[i].hash in distinct or size + rest[i].size <= DOWNLOAD_WINDOW):
                c = rest[i]
                if c.hash not in distinct:
                    distinct[c.hash] = None
                    size += c.size
                window.append(c)
                i += 1
            got: dict[str, bytes] = {}
            pos = 0
            for name, data in api.fetch_chunks(list(distinct)):
                got[name] = data
                received += len(data)
                # Write each chunk as soon as everything before it is here: the part file
                # grows while the download runs, so an interrupted one keeps what arrived.
                while pos < len(window) and window[pos].hash in got:
                    piece = got[window[pos].hash]
                    out.write(piece)
                    if progress:
                        progress(len(piece))
                    pos += 1
            if pos != len(window):
                raise CubbyError(f"the server did not send every chunk of {remote}", code="short_download")
        out.flush()
        os.fsync(out.fileno())
    if part.stat().st_size != entry.size:
        raise CubbyError(f"downloaded {part.stat().st_size} bytes of {remote}, expected {entry.size}", code="short_download")
    modes.apply_mode(part, entry.mode)
    if entry.mtime:
        os.utime(part, (entry.mtime, entry.mtime))
    os.replace(part, local)
    meta.unlink(missing_ok=True)
    durable.fsync_dir(local.parent)
    return DownloadResult(entry.path, entry.size, received, str(local))


def barrier(d: Path) -> None:
    """One durability barrier for everything written under ``d``'s file system."""
    durable.barrier(d)


def _write_small_files(
    api: ApiClient, items: list[tuple[Entry, list[ChunkRef], Path]], progress: Progress | None
) -> list[DownloadResult]:
    """Fetch the chunks of many small files in a few requests, write each to a temp file,
    make them all durable with one barrier, then rename them into place."""
    wanted = list(dict.fromkeys(c.hash for _, chunks, _ in items for c in chunks))
    got: dict[str, bytes] = {}
    for i in range(0, len(wanted), 1024):
        got.update(api.fetch_chunks(wanted[i : i + 1024]))
    staged: list[tuple[Path, Path, Entry]] = []
    for entry, chunks, target in items:
        target.parent.mkdir(parents=True, exist_ok=True)
        part, _ = _part_paths(target)
        with open(part, "wb") as out:
            for c in chunks:
                out.write(got[c.hash])
        modes.apply_mode(part, entry.mode)
        if entry.mtime:
            os.utime(part, (entry.mtime, entry.mtime))
        staged.append((part, target, entry))
        if progress:
            progress(entry.size)
    if staged:
        barrier(staged[0][1].parent)
        for part, target, _ in staged:
            os.replace(part, target)
        barrier(staged[0][1].parent)
    received = {h: len(d) for h, d in got.items()}
    results = []
    seen: set[str] = set()
    for entry, chunks, target in items:
        mine = sum(received[c.hash] for c in chunks if c.hash not in seen)
        seen.update(c.hash for c in chunks)
        results.append(DownloadResult(entry.path, entry.size, mine, str(target)))
    return results


def download_tree(
    api: ApiClient, remote_dir: str, local_dir: Path, *, progress: Progress | None = None,
    on_result: Callable[[DownloadResult], None] | None = None,
) -> list[DownloadResult]:
    """Download a folder. Files already present with the same content are left alone; small
    files travel many per request; large ones one by one, resumable."""
    remote_dir = paths.normalize(remote_dir)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    results: list[DownloadResult] = []

    def emit(r: DownloadResult) -> None:
        results.append(r)
        if on_result:
            on_result(r)

    small: list[tuple[Entry, Path]] = []
    for e in api.list(remote_dir, recursive=True):
        rel = e.path[len(remote_dir) :].lstrip("/") if remote_dir != paths.ROOT else e.path.lstrip("/")
        for part in rel.split("/"):
            check_local_name(part)
        target = local_dir.joinpath(*rel.split("/"))
        if e.kind == "folder":
            target.mkdir(parents=True, exist_ok=True)
            continue
        if target.exists() and target.stat().st_size == e.size and scan_file(target, e.path).content_hash == e.content_hash:
            modes.apply_mode(target, e.mode)
            emit(DownloadResult(e.path, e.size, 0, str(target)))
            continue
        if e.size <= SMALL_FILE:
            small.append((e, target))
        else:
            emit(download_file(api, e.path, target, progress=progress))
    for i in range(0, len(small), BATCH):
        group = small[i : i + BATCH]
        lists = api.blocklists([e.path for e, _ in group])
        ready = []
        for (_e, target), bl in zip(group, lists):
            if isinstance(bl, CubbyError):
                continue  # deleted since the listing: nothing to download
            ready.append((bl[0], bl[1], target))
        for r in _write_small_files(api, ready, progress):
            emit(r)
    return results


def check_local_name(name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise BadRequest(f"refusing to write a local file named {name!r}")


__all__ = [
    "Conflict",
    "DownloadResult",
    "FileChanged",
    "UploadResult",
    "download_file",
    "download_tree",
    "scan_file",
    "supply",
    "upload_file",
    "upload_tree",
]

"""Moving files in and out: upload with deduplication and proof of possession, resumable
download, and whole trees with batched commits.

Memory stays bounded whatever the file size: a first pass only names the chunks (FastCDC with
no data kept), and the chunks the server asks for are read again by offset, a batch at a time.
A chunk read again must still hash to its name, or the file changed under us and the upload
stops rather than commit a mix of two versions.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from cubby.client.api import ApiClient, batches, commit_body
from cubby.core import paths
from cubby.core.chunking import chunk_file
from cubby.core.hashing import content_hash, sha256_hex
from cubby.errors import BadRequest, Conflict, CubbyError, NotFound
from cubby.metadata.model import ChunkRef, CommitResult, Entry

Progress = Callable[[int], None]
"""Called with a number of bytes done, as work advances."""

MAX_PROOFS = 4096
BATCH_COMMITS = 1000
UPLOAD_BATCH_BYTES = 16 * 1024 * 1024


class FileChanged(CubbyError):
    code = "file_changed"
    status = 409
    retryable = True


@dataclass(frozen=True)
class LocalChunk:
    offset: int
    size: int
    hash: str


@dataclass
class LocalFile:
    """A local file named for upload: where it is, its chunks, and what it was when hashed."""

    local: Path
    remote: str
    size: int
    mtime: float
    chunks: list[LocalChunk]
    inode: int = 0

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


def scan_file(local: Path, remote: str, progress: Progress | None = None) -> LocalFile:
    st = local.stat()
    chunks = []
    for c in chunk_file(local, with_data=False):
        chunks.append(LocalChunk(c.offset, c.length, c.hash))
        if progress:
            progress(c.length)
    after = local.stat()
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise FileChanged(f"{local} changed while it was being read; try again when it is saved")
    return LocalFile(local, remote, st.st_size, st.st_mtime, chunks, st.st_ino)


def read_chunk(fh: BinaryIO, c: LocalChunk, where: Path) -> bytes:
    fh.seek(c.offset)
    data = fh.read(c.size)
    if len(data) != c.size or sha256_hex(data) != c.hash:
        raise FileChanged(f"{where} changed during the upload; run the command again")
    return data


def _read_many(wanted: Iterable[tuple[str, tuple[Path, LocalChunk]]]) -> Iterator[tuple[str, bytes]]:
    """Read chunks from their files, keeping one file open at a time (inputs sorted by file)."""
    current: Path | None = None
    fh: BinaryIO | None = None
    try:
        for name, (path, c) in sorted(wanted, key=lambda kv: (str(kv[1][0]), kv[1][1].offset)):
            if path != current:
                if fh:
                    fh.close()
                fh = open(path, "rb")
                current = path
            assert fh is not None
            yield name, read_chunk(fh, c, path)
    finally:
        if fh:
            fh.close()


def supply(api: ApiClient, ns_id: int, needs: _Needs, progress: Progress | None = None) -> dict[Path, tuple[int, int]]:
    """Give the server every needed chunk: prove possession where it already holds the bytes,
    upload the rest in large requests. Returns (chunks sent, bytes sent) per local file."""
    if not needs.where:
        return {}
    names = sorted(needs.where)
    rejected: list[str] = []
    for i in range(0, len(names), MAX_PROOFS):
        part = names[i : i + MAX_PROOFS]
        proofs = {
            name: hashlib.sha256(bytes.fromhex(needs.nonces[name]) + data).hexdigest()
            for name, data in _read_many((n, needs.where[n]) for n in part)
        }
        rejected.extend(api.prove(ns_id, proofs)[1])
    credit: dict[Path, tuple[int, int]] = {}
    for batch in batches(_read_many((n, needs.where[n]) for n in rejected), max_bytes=UPLOAD_BATCH_BYTES):
        api.upload_chunks(ns_id, batch)
        for name, data in batch:
            owner = needs.where[name][0]
            s, b = credit.get(owner, (0, 0))
            credit[owner] = (s + 1, b + len(data))
        if progress:
            progress(sum(len(d) for _, d in batch))
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
    lf = scan_file(Path(local), remote, progress)
    if expected_rev is None and overwrite:
        try:
            current = api.stat(remote)
            if current.kind == "file":
                if current.content_hash == lf.content_hash and current.size == lf.size:
                    return UploadResult(current.path, current.rev, lf.size, len(lf.chunks), 0, 0, skipped=True)
                expected_rev = current.rev
        except NotFound:
            pass
    sent = sent_bytes = 0
    for _attempt in range(3):
        res = api.commit(remote, lf.size, lf.refs, expected_rev, lf.mtime)
        if res.entry is not None:
            return UploadResult(res.entry.path, res.entry.rev, lf.size, len(lf.chunks), sent, sent_bytes)
        for s, b in supply(api, _ns_of(api, remote), _needs_for([(lf, res)]), progress).values():
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


def upload_tree(
    api: ApiClient,
    local_dir: Path,
    remote_dir: str,
    *,
    progress: Progress | None = None,
    on_result: Callable[[UploadResult], None] | None = None,
    workers: int = 4,
) -> list[UploadResult]:
    """Upload a folder: hash files in parallel, commit them a thousand at a time, prove or
    upload the chunks the server asks for in a few large requests, and commit again.
    Files whose content the server already has at the same path are skipped."""
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

    with ThreadPoolExecutor(max(1, workers)) as pool:
        scanned = list(pool.map(lambda p: scan_file(p, remote_of(p), progress), files))
    results: list[UploadResult] = []
    todo: list[LocalFile] = []
    for lf in scanned:
        cur = existing.get(paths.key(lf.remote))
        if cur is not None and cur.kind == "file" and cur.content_hash == lf.content_hash and cur.size == lf.size:
            r = UploadResult(cur.path, cur.rev, lf.size, len(lf.chunks), 0, 0, skipped=True)
            results.append(r)
            if on_result:
                on_result(r)
        else:
            todo.append(lf)
    ns_id = _ns_of(api, remote_dir)
    sent_by_file: dict[Path, tuple[int, int]] = {}
    for i in range(0, len(todo), BATCH_COMMITS):
        group = todo[i : i + BATCH_COMMITS]
        pending = group
        for _attempt in range(3):
            bodies = []
            for lf in pending:
                cur = existing.get(paths.key(lf.remote))
                rev = cur.rev if cur is not None and cur.kind == "file" else None
                bodies.append(commit_body(lf.remote, lf.size, lf.refs, rev, lf.mtime))
            outcomes = api.commit_batch(bodies)
            needing: list[tuple[LocalFile, CommitResult]] = []
            for lf, out in zip(pending, outcomes):
                if isinstance(out, CubbyError):
                    raise out.__class__(f"{lf.remote}: {out.message}", code=out.code)
                if out.entry is not None:
                    s, b = sent_by_file.get(lf.local, (0, 0))
                    r = UploadResult(out.entry.path, out.entry.rev, lf.size, len(lf.chunks), s, b)
                    results.append(r)
                    if on_result:
                        on_result(r)
                else:
                    needing.append((lf, out))
            if not needing:
                break
            for owner, (s, b) in supply(api, ns_id, _needs_for(needing), progress).items():
                prev = sent_by_file.get(owner, (0, 0))
                sent_by_file[owner] = (prev[0] + s, prev[1] + b)
            pending = [lf for lf, _ in needing]
        else:
            raise CubbyError("the server kept asking for chunks; giving up", code="upload_incomplete")
    made = {paths.key(paths.split(r.path)[0]) for r in results}
    for d in dirs:
        remote = remote_of(d)
        if paths.key(remote) not in made and paths.key(remote) not in existing:
            if not any(k.startswith(paths.key(remote) + "/") for k in made):
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
            with open(part, "rb") as fh:
                for c in chunks:
                    data = fh.read(c.size)
                    if len(data) != c.size or sha256_hex(data) != c.hash:
                        break
                    keep += 1
                    if progress:
                        progress(c.size)
    meta.write_text(json.dumps({"content_hash": entry.content_hash, "rev": entry.rev, "path": remote}))
    received = 0
    offset = sum(c.size for c in chunks[:keep])
    mode = "r+b" if part.exists() and keep else "wb"
    with open(part, mode) as out:
        out.seek(offset)
        out.truncate()
        rest = chunks[keep:]
        # Fetch distinct chunks in bounded batches, write them wherever they occur.
        for i in range(0, len(rest), 64):
            window = rest[i : i + 64]
            want = list(dict.fromkeys(c.hash for c in window))
            got = dict(api.fetch_chunks(want))
            for c in window:
                data = got[c.hash]
                out.write(data)
                if progress:
                    progress(len(data))
            received += sum(len(got[h]) for h in want)
        out.flush()
        os.fsync(out.fileno())
    if part.stat().st_size != entry.size:
        raise CubbyError(f"downloaded {part.stat().st_size} bytes of {remote}, expected {entry.size}", code="short_download")
    if entry.mtime:
        os.utime(part, (entry.mtime, entry.mtime))
    os.replace(part, local)
    meta.unlink(missing_ok=True)
    _fsync_dir(local.parent)
    return DownloadResult(entry.path, entry.size, received, str(local))


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


SMALL_FILE = 4 * 1024 * 1024
"""Files up to this size are fetched many per request and made durable together."""


def _barrier(d: Path) -> None:
    """One durability barrier for everything written under ``d``'s file system."""
    from cubby.blockstore.local import _load_syncfs

    fn = _load_syncfs()
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if fn is None or fn(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


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
        if entry.mtime:
            os.utime(part, (entry.mtime, entry.mtime))
        staged.append((part, target, entry))
        if progress:
            progress(entry.size)
    if staged:
        _barrier(staged[0][1].parent)
        for part, target, _ in staged:
            os.replace(part, target)
        _barrier(staged[0][1].parent)
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
            emit(DownloadResult(e.path, e.size, 0, str(target)))
            continue
        if e.size <= SMALL_FILE:
            small.append((e, target))
        else:
            emit(download_file(api, e.path, target, progress=progress))
    for i in range(0, len(small), 1000):
        group = small[i : i + 1000]
        lists = api.blocklists([e.path for e, _ in group])
        ready = []
        for (e, target), bl in zip(group, lists):
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
    "UploadResult", "DownloadResult", "upload_file", "upload_tree", "download_file", "download_tree",
    "scan_file", "supply", "FileChanged", "Conflict",
]

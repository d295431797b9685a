"""Downloads: one file through a resumable part file, or a whole tree with small files many
per request; each file appears under its name only when whole and durable.

Kept apart from uploads because the two share nothing but the local-file types; the sync
engine's own download path (`cubby.client.sync.downloads`) reuses `verified_prefix` and
`DELTA_MIN` from here.
"""

from __future__ import annotations

import json
import os
import queue
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias

from cubby.client import modes
from cubby.client.api import MOST_FETCHES, ApiClient
from cubby.client.localfiles import Progress, check_local_name, lies_within, scan_file
from cubby.client.windows import BATCH, DOWNLOAD_IN_FLIGHT, DOWNLOAD_WINDOW, SMALL_FILE
from cubby.core import durable, paths
from cubby.core.chunking import MIN_SIZE
from cubby.core.hashing import sha256_hex
from cubby.errors import CubbyError
from cubby.model import ChunkRef, Entry


@dataclass
class DownloadResult:
    path: str
    size: int
    bytes_received: int
    local: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


DELTA_MIN = MIN_SIZE
"""Files smaller than one minimal chunk are downloaded whole: a delta saves little on them."""


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
        # The next window is asked for while this one is written: the server reads ahead for
        # it meanwhile, and no round trip is waited for between windows; `DOWNLOAD_IN_FLIGHT`
        # windows are with the server, or as many as it advises once asked (its first answer:
        # `ApiClient.fetch_advice`). The part file goes to the disk while the download runs
        # (`Writeback`), so the fsync below waits little.
        with ThreadPoolExecutor(MOST_FETCHES) as pool:
            disk = durable.Writeback(out.fileno(), offset)
            pending: deque[tuple[list[ChunkRef], Arrivals]] = deque()

            def write_next() -> int:
                window, arrivals = pending.popleft()
                got = _write_window(out, window, arrivals, remote, progress)
                disk.wrote(sum(c.size for c in window))
                return got

            for window, distinct in _windows(rest):
                pending.append((window, _prefetch(pool, api, distinct)))
                while len(pending) >= (api.fetch_advice or DOWNLOAD_IN_FLIGHT):
                    received += write_next()
            while pending:
                received += write_next()
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


Arrivals: TypeAlias = "queue.SimpleQueue[tuple[str, bytes | bytearray] | BaseException | None]"


def _windows(rest: Sequence[ChunkRef]) -> Iterator[tuple[list[ChunkRef], list[str]]]:
    """Windows of at most DOWNLOAD_WINDOW bytes of distinct chunks (memory stays bounded
    whatever the file), each chunk fetched once however often it occurs: the chunks of the
    window in file order, and the distinct names to fetch."""
    i = 0
    while i < len(rest):
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
        yield window, list(distinct)


def _prefetch(pool: ThreadPoolExecutor, api: ApiClient, hashes: list[str]) -> Arrivals:
    """Fetch ``hashes`` on ``pool``; the chunks are handed over one by one as they arrive,
    then None (or the error that stopped the fetch)."""
    arrivals: Arrivals = queue.SimpleQueue()

    def run() -> None:
        try:
            for item in api.fetch_chunks(hashes):
                arrivals.put(item)
        except BaseException as exc:
            arrivals.put(exc)
            return
        arrivals.put(None)

    pool.submit(run)
    return arrivals


def _write_window(
    out: IO[bytes], window: list[ChunkRef], arrivals: Arrivals, remote: str, progress: Progress | None
) -> int:
    """Write the chunks of ``window`` as they arrive; the bytes received."""
    got: dict[str, bytes | bytearray] = {}
    received = pos = 0
    while (item := arrivals.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        name, data = item
        got[name] = data
        received += len(data)
        # Write each chunk as soon as everything before it is here: the part file grows
        # while the download runs, so an interrupted one keeps what arrived.
        while pos < len(window) and window[pos].hash in got:
            piece = got[window[pos].hash]
            out.write(piece)
            if progress:
                progress(len(piece))
            pos += 1
    if pos != len(window):
        raise CubbyError(f"the server did not send every chunk of {remote}", code="short_download")
    return received


def _write_small_files(
    api: ApiClient, items: list[tuple[Entry, list[ChunkRef], Path]], progress: Progress | None
) -> list[DownloadResult]:
    """Fetch the chunks of many small files in a few requests, write each to a temp file,
    make them all durable with one barrier, then rename them into place."""
    wanted = list(dict.fromkeys(c.hash for _, chunks, _ in items for c in chunks))
    got: dict[str, bytes | bytearray] = {}
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
        durable.barrier(staged[0][1].parent)
        for part, target, _ in staged:
            os.replace(part, target)
        durable.barrier(staged[0][1].parent)
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
    on_results: Callable[[list[DownloadResult]], None] | None = None,
) -> list[DownloadResult]:
    """Download a folder. Files already present with the same content are left alone; small
    files travel many per request; large ones one by one, resumable. ``on_results`` is told
    the results as they come: the files found unchanged together (before the next large file's
    download, or at the end of the listing), a batch of small files at once, a large file alone."""
    remote_dir = paths.normalize(remote_dir)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    results: list[DownloadResult] = []
    root = os.path.realpath(local_dir)
    inside_root: dict[str, bool] = {}  # folder -> lies inside, once per folder (a tree's files share them)

    def check_inside(folder: Path) -> None:
        """Refuse to create or write in ``folder`` unless, every link on the way followed, it
        is ``local_dir`` or below it: a link already in the local tree (``a -> /etc``) must not
        carry the server's files elsewhere, as it would with every write followed through it."""
        key = os.fspath(folder)
        ok = inside_root.get(key)
        if ok is None:
            real = os.path.realpath(key)
            ok = inside_root[key] = lies_within(real, root)
        if not ok:
            raise CubbyError(
                f"refusing to write {folder}: a link on the way leads outside {local_dir}; remove it, or "
                "download to another folder",
                code="unsafe_path",
            )

    def emit(*rs: DownloadResult) -> None:
        results.extend(rs)
        if on_results and rs:
            on_results(list(rs))

    small: list[tuple[Entry, Path]] = []
    unchanged: list[DownloadResult] = []  # told together, before the next file that takes time
    for e in api.list(remote_dir, recursive=True):
        rel = e.path[len(remote_dir) :].lstrip("/") if remote_dir != paths.ROOT else e.path.lstrip("/")
        for part in rel.split("/"):
            check_local_name(part)
        target = local_dir.joinpath(*rel.split("/"))
        if e.kind == "folder":
            check_inside(target)
            target.mkdir(parents=True, exist_ok=True)
            continue
        check_inside(target.parent)
        # (a link at the file's own name is replaced by the download, never followed)
        if (
            not target.is_symlink() and target.exists() and target.stat().st_size == e.size
            and scan_file(target, e.path).content_hash == e.content_hash
        ):
            modes.apply_mode(target, e.mode)
            unchanged.append(DownloadResult(e.path, e.size, 0, str(target)))
            continue
        if e.size <= SMALL_FILE:
            small.append((e, target))
        else:
            emit(*unchanged)
            unchanged.clear()
            emit(download_file(api, e.path, target, progress=progress))
    emit(*unchanged)
    for i in range(0, len(small), BATCH):
        group = small[i : i + BATCH]
        lists = api.blocklists([e.path for e, _ in group])
        ready = []
        for (_e, target), bl in zip(group, lists):
            if isinstance(bl, CubbyError):
                continue  # deleted since the listing: nothing to download
            ready.append((bl[0], bl[1], target))
        emit(*_write_small_files(api, ready, progress))
    return results



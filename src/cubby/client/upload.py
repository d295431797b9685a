"""Uploads: one file or a whole tree, with deduplication, proof of possession and batched
commits (download is `cubby.client.download`, local files `cubby.client.localfiles`).

How an upload spends its work (each byte of a new file is hashed by the client at most twice:
once to name it (SHA-256), once for the proof of possession (keyed BLAKE3, `cubby.core.proofs`);
and read at most three times, the third from the page cache):

- a first pass names the chunks (FastCDC, one SHA-256 per chunk while reading). A small file's
  bytes are kept from this pass (`KEEP_BYTES`), so it is never read again; a large file keeps
  only its chunk list, so memory stays bounded whatever the size;
- new small files (up to `KEEP_BYTES`) are proven before their first commit, with nonces the
  client computes from the namespace's proof key (`needs_up_front`,
  `cubby.metadata.possession`): a group of them is prove, upload the refused chunks, commit;
  the server commits each file once (the sync engine's too, whose files are read back here);
- a large file new at its path (`upload_file`; in `upload_tree`, above `STREAM_IN_TREE`) is
  sent while it is named (`_stream_new`, `cubby.client.streamed`): each window of
  `UPLOAD_WINDOW` is proven from the bytes just read and its refused chunks uploaded while the
  next is named, and the file is committed once, at the end;
- for edits (and the sync engine's large files) the server answers a commit with the chunks
  it needs; those are read again a window of `UPLOAD_WINDOW` at a time, the window's proofs
  are computed from those bytes, and the chunks whose proof is rejected are uploaded;
- windows are pipelined: the next window is read and hashed while at most `IN_FLIGHT` earlier
  ones are with the server, so client and server work at the same time; and up to
  `PROVE_AHEAD` more wait out the server's padding of their proofs holding no bytes, to be
  read once more for their upload (`supply`);
- no chunk is sent before the server has asked for it and refused its proof, however small:
  a chunk the server holds is never sent again, whoever sends it (a small file's chunks could
  be sent for less than the exchange costs, but that would send held bytes again).

A large file read again must be the file that was named. The client checks that by comparing
the file's stat stamp (size, mtime, ctime, inode) before and after each window with the one
taken when it was named, and hashes the chunks again only when the stamp differs or is unknown
(a `LocalFile` made elsewhere, e.g. from the sync state). It needs no more: the server verifies
every uploaded chunk against its name before storing it, and a proof computed over other bytes
is rejected, so bytes that changed in the same clock tick as the stamp still cannot be
committed; they end the upload with `FileChanged` rather than commit a mix of two versions.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cubby.client import modes
from cubby.client.api import ApiClient, commit_body
from cubby.client.heap import gc_frozen
from cubby.client.localfiles import (
    FileChanged,
    LocalChunk,
    LocalFile,
    LocalPath,
    NotAFile,
    Progress,
    Skipped,
    scan_file,
    skipped_for,
    stamp_of,
    walk,
)
from cubby.client.pipeline import Pipeline, Precedence
from cubby.client.streamed import ReadFailed, StreamedFile
from cubby.client.windows import (
    BATCH,
    FIRST_GROUP,
    GROUP_BYTES,
    IN_FLIGHT,
    KEEP_BYTES,
    MAX_WINDOW_CHUNKS,
    PROVE_AHEAD,
    STREAM_IN_TREE,
    UPLOAD_WINDOW,
)
from cubby.core import delta, paths
from cubby.core.hashing import HOLD_BELOW, sha256_hex
from cubby.core.nonces import chunk_nonce
from cubby.core.proofs import proof_hex
from cubby.errors import ChunkMismatch, CubbyError, NotFound, Unavailable
from cubby.model import CommitResult, Entry


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
class Needs:
    """Chunks the server asked for across one or more commits, with where to read them."""

    where: dict[str, tuple[LocalPath, LocalChunk]] = field(default_factory=dict)
    nonces: dict[str, str] = field(default_factory=dict)
    windows: dict[str, int | None] = field(default_factory=dict)
    """The hour each nonce was made for, as the commit answer named it."""
    files: dict[LocalPath, LocalFile] = field(default_factory=dict)
    """The file each chunk is read from (for its stamp and kept bytes); absent: hash to check."""
    bases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Old chunks on the server to send a needed chunk as a patch against (the commit answer
    names them: the chunks at the same place in the version being replaced)."""

    def add(
        self, lf: LocalFile, chunk: LocalChunk, nonce: str, window: int | None, base: tuple[str, ...] = ()
    ) -> None:
        """Ask for ``chunk`` of ``lf`` (once: the first file that has it is read)."""
        if chunk.hash in self.where:
            return
        self.where[chunk.hash] = (lf.local, chunk)
        self.nonces[chunk.hash] = nonce
        self.windows[chunk.hash] = window
        if base:
            self.bases[chunk.hash] = base
        self.files.setdefault(lf.local, lf)


def _send_patches(
    api: ApiClient, ns_id: int, items: list[tuple[str, bytes]], bases: dict[str, tuple[str, ...]]
) -> dict[str, int]:
    """Send ``items`` that have a base as patches; returns the bytes sent per chunk stored so.
    Anything the server will not take as a patch (its base is gone, a refused patch) is left
    for the caller to upload whole: a patch is an optimisation, never a requirement."""
    with_base = [(n, d) for n, d in items if n in bases and len(d) >= delta.PATCH_MIN]
    if not with_base:
        return {}
    try:
        sigs = api.signatures(sorted({b for n, _ in with_base for b in bases[n]}))
        triples = []
        cost: dict[str, int] = {}
        for n, d in with_base:
            if all(b in sigs for b in bases[n]):
                sig = b"".join(sigs[b] for b in bases[n])  # signs the concatenated base
                p = delta.patch(sig, d)
                if len(p) + len(sig) < len(d):
                    triples.append((n, bases[n], p))
                    cost[n] = len(p) + len(sig)
        if triples:
            api.upload_patches(ns_id, triples)
    except Unavailable:
        raise
    except CubbyError:
        return {}
    return cost


def _same(e: Entry, lf: LocalFile) -> bool:
    """Does the server's file already hold what ``lf`` would commit (bytes and mode)?"""
    return e.content_hash == lf.content_hash and e.size == lf.size and modes.version("", e.mode) == modes.version("", lf.mode)


def _changed(where: LocalPath) -> FileChanged:
    return FileChanged(f"{where} changed during the upload; run the command again")


def _read_from(path: LocalPath, lf: LocalFile | None, wanted: list[tuple[str, LocalChunk]]) -> list[tuple[str, bytes]]:
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
    try:
        fh = open(path, "rb", buffering=0)  # noqa: SIM115 (closed by the with below)
    except OSError as exc:  # deleted or renamed since it was named: as changed as can be
        raise _changed(path) from exc
    with fh:
        before = stamp_of(os.fstat(fh.fileno()))
        for name, c in wanted:
            fh.seek(c.offset)
            data = fh.read(c.size)
            if len(data) != c.size:
                raise _changed(path)
            out.append((name, data))
        after = stamp_of(os.fstat(fh.fileno()))
    stamp = lf.stamp if lf is not None else None
    if stamp is None or before != stamp or after != stamp:
        for (_name, c), (_, data) in zip(wanted, out):
            if sha256_hex(data) != c.hash:
                raise _changed(path)
    return out


def _read_window(needs: Needs, names: Sequence[str]) -> list[tuple[str, bytes]]:
    """Read a window of needed chunks (given in file order), one open per file."""
    out: list[tuple[str, bytes]] = []
    i = 0
    while i < len(names):
        path, chunk = needs.where[names[i]]
        lf = needs.files.get(path)
        if lf is not None and lf.data is not None and chunk.offset == 0 and chunk.size == len(lf.data):
            out.append((names[i], lf.data))  # a small file kept whole, one chunk: as `_read_from`, without its list
            i += 1
            continue
        j = i
        while j < len(names) and needs.where[names[j]][0] == path:
            j += 1
        out.extend(_read_from(path, needs.files.get(path), [(n, needs.where[n][1]) for n in names[i:j]]))
        i = j
    return out


def _windows(needs: Needs) -> Iterator[list[str]]:
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


def _urgent(precedence: Precedence | None) -> AbstractContextManager[None]:
    return nullcontext() if precedence is None else precedence.urgent()


def _proof(nonce: str, data: bytes) -> str:
    """The proof of possession of ``data`` for ``nonce`` with the algorithm `ApiClient.prove`
    names (`cubby.core.proofs.CURRENT`: keyed BLAKE3, a fifth of SHA-256's CPU)."""
    return proof_hex(bytes.fromhex(nonce), data)


def _read_again_cheaply(needs: Needs, names: Sequence[str]) -> bool:
    """Whether every chunk of a window can be had again without hashing it again: kept in
    memory, or read from a file whose stamp was taken when it was named (`_read_from`)."""
    for name in names:
        lf = needs.files.get(needs.where[name][0])
        if lf is None or (lf.data is None and lf.stamp is None):
            return False
    return True


def supply(
    api: ApiClient,
    ns_id: int,
    needs: Needs,
    progress: Progress | None = None,
    *,
    in_flight: int = IN_FLIGHT,
    ahead: int = PROVE_AHEAD,
    precedence: Precedence | None = None,
) -> dict[LocalPath, tuple[int, int]]:
    """Give the server every needed chunk: prove possession where it already holds the bytes,
    upload the rest. Returns (chunks sent, bytes sent) per local file.

    Window by window: this thread reads the chunks and computes their proofs; a worker sends
    the proofs and then uploads the rejected chunks, while this thread goes on with the next
    window. At most ``in_flight`` windows hold their bytes, each from its read until its
    upload is answered. A window that can be had again cheaply (`_read_again_cheaply`) lets
    its bytes go once its proofs are computed, and up to ``ahead`` more such windows wait out
    the server's padding of refused proofs (`RejectPacer`: about as long as reading the
    window from the store) holding nothing; once refused, its chunks are read again (kept
    bytes, or the page cache: they were read moments before) to be uploaded. Without that,
    half the time of each window with the server was the pad, and a 1 GiB put of new bytes
    went at the pace of four pads at once: 3.7-4.1 s on the 2-core machine against 3.0-3.1 s
    with eight windows at once (which held 185 MiB of memory, not 118)."""
    if not needs.where:
        return {}
    windows = list(_windows(needs))
    return _supply(
        api, ns_id, needs, ((w, None) for w in windows), len(windows) > 1, progress, in_flight, ahead,
        precedence=precedence,
    )


Verdict = tuple[int, int]
"""One prove request's answer: how many of its proofs were accepted, of how many."""


def _supply(
    api: ApiClient,
    ns_id: int,
    needs: Needs,
    windows: Iterable[tuple[list[str], list[tuple[str, bytes]] | None]],
    many: bool,
    progress: Progress | None,
    in_flight: int,
    ahead: int,
    verdicts: list[Verdict] | None = None,
    precedence: Precedence | None = None,
) -> dict[LocalPath, tuple[int, int]]:
    """`supply`'s work over ``windows``: each a window's chunk names and, when the caller has
    them, their bytes (None: read here, `_read_window`). ``needs`` must name a window's chunks
    before the window is taken from ``windows``, which may be a generator that names them as
    it goes (`cubby.client.streamed`). ``many``: more than one window (one alone has no pad to
    hide). ``verdicts`` gets each prove request's answer (`Verdict`), as it comes; a window's
    read and proofs are ``precedence``'s urgent work (`Precedence`)."""
    slots = threading.BoundedSemaphore(max(1, in_flight))
    """A window holds one from before its bytes are read until its upload is answered."""

    def push(items: list[tuple[str, bytes]], proofs: dict[str, tuple[int, str]], rejected: set[str]) -> list[tuple[str, int]]:
        batch = [(n, d) for n, d in items if n not in proofs or n in rejected]
        patched = _send_patches(api, ns_id, batch, needs.bases)
        batch = [(n, d) for n, d in batch if n not in patched]
        try:
            api.upload_chunks(ns_id, batch)
        except ChunkMismatch as exc:
            # The server hashed bytes read from a file that changed in the same clock tick as
            # its stamp: nothing of this window was stored under a wrong name.
            raise FileChanged(f"a file changed during the upload; run the command again ({exc.message})") from exc
        return [(n, len(d)) for n, d in batch] + list(patched.items())

    def read_and_push(wanted: list[str], proofs: dict[str, tuple[int, str]], rejected: set[str]) -> list[tuple[str, int]]:
        # On one of ``in_flight`` threads: with a thread per window, each thread's allocator
        # arena kept its own freed windows (197 MiB at the busiest, against 118 before).
        with slots:
            return push(_read_window(needs, wanted), proofs, rejected)

    def send(names: list[str], items: list[tuple[str, bytes]] | None, proofs: dict[str, tuple[int, str]]) -> list[tuple[str, int]]:
        """Prove, then upload what was refused: from ``items``, whose slot this thread
        gives back; or, when None (let go), read again on an uploader thread."""
        try:
            rejected: set[str] = set()
            if proofs:
                rejected = set(api.prove(ns_id, proofs, needs.windows)[1])
                if verdicts is not None:
                    verdicts.append((len(proofs) - len(rejected), len(proofs)))
            if items is not None:
                return push(items, proofs, rejected)
            wanted = [n for n in names if n not in proofs or n in rejected]
            return uploader.submit(read_and_push, wanted, proofs, rejected).result() if wanted else []
        finally:
            if items is not None:
                slots.release()

    credit: dict[LocalPath, tuple[int, int]] = {}

    def account(sent: list[tuple[str, int]]) -> None:
        for name, n in sent:
            owner = needs.where[name][0]
            s, b = credit.get(owner, (0, 0))
            credit[owner] = (s + 1, b + n)
        if progress and sent:
            progress(sum(n for _, n in sent))

    with ThreadPoolExecutor(max(1, in_flight)) as uploader, Pipeline(max(1, in_flight) + max(0, ahead)) as pipe:
        for window, given in windows:
            # (alone, or without proofs to send, a window has no pad to hide: it keeps its bytes)
            again = ahead > 0 and many and all(n in needs.nonces for n in window) and _read_again_cheaply(needs, window)
            if not again:
                slots.acquire()
            try:
                with _urgent(precedence):
                    items = _read_window(needs, window) if given is None else given
                    proofs = {n: (len(d), _proof(needs.nonces[n], d)) for n, d in items if n in needs.nonces}
            except BaseException:
                if not again:
                    slots.release()
                raise
            kept = None if again else items  # a window read again lets its bytes go now
            for sent in pipe.submit(lambda w=window, k=kept, p=proofs: send(w, k, p)):  # type: ignore[misc]
                account(sent)
            del items, kept, given
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
    at ``remote`` now; a change racing us is still refused as a conflict.

    A large file new at ``remote`` is sent while it is named (`_stream_new`); anything else is
    named whole and committed first, and the answer says which chunks to send (for a file
    being replaced, the chunks it shares with the old version are not read again, and changed
    ones may go as patches against it)."""
    local = Path(local)
    current: Entry | None = None
    asked = False
    if expected_rev is None and overwrite and _size_of(local) > KEEP_BYTES:
        current, asked = _current(api, remote), True
        if current is None and not _under_a_file(api, remote):
            try:
                streamed = _stream_new(api, local, remote, progress)
            except ReadFailed as exc:
                raise exc.cause from None  # as naming it whole would have: the file's own error
            if streamed is not None:
                return streamed
    lf = scan_file(local, remote, progress, keep_up_to=KEEP_BYTES)
    if expected_rev is None and overwrite:
        if not asked:
            current = _current(api, remote)
        if current is not None and current.kind == "file":
            if _same(current, lf):
                return UploadResult(current.path, current.rev, lf.size, len(lf.chunks), 0, 0, skipped=True)
            expected_rev = current.rev
    sent = sent_bytes = 0
    ns_id: int | None = None
    if expected_rev is None and lf.data is not None and lf.chunks:
        ns_id = _ns_of(api, remote)
        for s, b in supply(api, ns_id, needs_up_front(api, ns_id, [(lf, None)]), progress).values():
            sent += s
            sent_bytes += b
    return _commit_until_done(api, lf, expected_rev, ns_id, (sent, sent_bytes), progress)


def _size_of(local: LocalPath) -> int:
    try:
        return os.stat(local).st_size
    except OSError:
        return 0  # scan_file says what is wrong with it


def _current(api: ApiClient, remote: str) -> Entry | None:
    try:
        return api.stat(remote)
    except NotFound:
        return None


def _under_a_file(api: ApiClient, remote: str) -> bool:
    """Whether the nearest existing ancestor of ``remote`` (which does not exist) is a file, so
    that its commit is bound to be refused (``not_a_folder``): such a file is not streamed, and
    the commit, first, says so before any byte is sent. One `stat` per missing ancestor."""
    for folder in reversed(paths.ancestors(paths.normalize(remote))):
        found = _current(api, folder)
        if found is not None:
            return found.kind == "file"
    return False


def _commit_until_done(
    api: ApiClient, lf: LocalFile, expected_rev: int | None, ns_id: int | None, sent: tuple[int, int],
    progress: Progress | None,
) -> UploadResult:
    """Commit ``lf``, supplying what each answer asks for, at most three times; ``sent`` is
    what was sent for it before (chunks, bytes)."""
    chunks_sent, bytes_sent = sent
    for _attempt in range(3):
        res = api.commit(lf.remote, lf.size, lf.refs, expected_rev, lf.mtime, lf.mode)
        if res.entry is not None:
            return UploadResult(res.entry.path, res.entry.rev, lf.size, len(lf.chunks), chunks_sent, bytes_sent)
        if ns_id is None:
            ns_id = _ns_of(api, lf.remote)
        for s, b in supply(api, ns_id, needs_for([(lf, res)]), progress).values():
            chunks_sent += s
            bytes_sent += b
    raise CubbyError(f"the server kept asking for chunks of {lf.remote}; giving up", code="upload_incomplete")


HELD_SHARE = 0.5
"""`_stream_new` stops offering windows once the server accepted more than this share of one
window's proofs: the file is then mostly bytes the server holds, which the commit answer
sorts out without the server reading them back to check proofs."""


def _stream_new(
    api: ApiClient, local: Path, remote: str, progress: Progress | None, ns_id: int | None = None
) -> UploadResult | None:
    """Upload a large file that is new at ``remote`` while naming it (`cubby.client.streamed`):
    each window named is proven at once with nonces from the namespace's proof key, the
    refused chunks uploaded from the bytes just read (or read again, as `supply` does), on
    `IN_FLIGHT` windows at once while the next is named; then one commit. None when the server
    gives no proof key (an older server): the caller commits first instead.

    A window the server mostly holds stops the offers (`HELD_SHARE`); the rest of the file is
    still named, and the commit answer asks for what is missing, as for any file. ``ns_id``:
    the namespace ``remote`` is in, when the caller knows it."""
    if ns_id is None:
        ns_id = _ns_of(api, remote)
    key = api.proof_key(ns_id)
    if key is None:
        return None
    streamed = StreamedFile(local, remote, progress)
    needs = Needs()
    verdicts: list[Verdict] = []
    held = False

    def stop() -> bool:
        nonlocal held
        held = held or any(ok > HELD_SHARE * n for ok, n in list(verdicts))
        return held

    def offered() -> Iterator[tuple[list[str], list[tuple[str, bytes]]]]:
        nonlocal held
        for window in streamed.windows(UPLOAD_WINDOW, MAX_WINDOW_CHUNKS, stop):
            fresh = api.proof_key(ns_id)  # asked again near the end of its hour
            if fresh is None:
                held = True  # no key any more: the commit answer names the rest
                continue
            for chunk, _data in window:
                needs.add(streamed.provisional, chunk, chunk_nonce(fresh.key, chunk.hash, chunk.size), fresh.window)
            yield [c.hash for c, _ in window], [(c.hash, d) for c, d in window]

    credit = _supply(api, ns_id, needs, offered(), streamed.provisional.size > UPLOAD_WINDOW, progress, IN_FLIGHT, PROVE_AHEAD, verdicts)
    lf = streamed.named
    assert lf is not None  # the generator ran to its end (or raised)
    return _commit_until_done(api, lf, None, ns_id, credit.get(local, (0, 0)), progress)


Outcome = CommitResult | CubbyError
"""The server's answer to one commit of a batch: a result (an entry, or chunks it needs), or
the error refusing that one commit."""


def commit_group(
    api: ApiClient,
    ns_id: int,
    files: Sequence[tuple[LocalFile, int | None]],
    progress: Progress | None = None,
    *,
    on_commit: Callable[[list[tuple[int, Outcome]]], None] | None = None,
    skip: Collection[str] = frozenset(),
    precedence: Precedence | None = None,
) -> tuple[list[Outcome], dict[LocalPath, tuple[int, int]]]:
    """Commit a group of files (each with the revision it replaces, None for a new one) in one
    request, supply every chunk the server asks for (`supply`), and commit those files again:
    at most three rounds. Returns each file's last answer (an entry, an error, or a result
    still needing chunks after the last round) and the chunks and bytes sent per local file.

    ``on_commit`` sees each round's answers, as (index into ``files``, answer), before any chunk
    of the round is sent: `cubby put` stops there at the first refusal. `upload_tree` and the
    sync engine's uploads both send their groups through here, on a `Pipeline`. Chunks in
    ``skip`` were given to the server already (`cubby.client.sync.presend`): they are not
    proven up front (if the server still wants one, its commit answer asks for it). Naming the
    chunks up front and proving them are ``precedence``'s urgent work (`Precedence`)."""
    outcomes: list[Outcome] = []
    sent: dict[LocalPath, tuple[int, int]] = {}
    pending = list(range(len(files)))
    with _urgent(precedence):
        up_front = needs_up_front(api, ns_id, files, skip)
    _add_sent(sent, supply(api, ns_id, up_front, progress, precedence=precedence))
    for _attempt in range(3):
        if not pending:
            break
        bodies = [commit_body(lf.remote, lf.size, lf.refs, rev, lf.mtime, lf.mode) for lf, rev in (files[i] for i in pending)]
        answers = list(zip(pending, api.commit_batch(bodies)))
        if not outcomes:
            outcomes = [out for _, out in answers]
        else:
            for i, out in answers:
                outcomes[i] = out
        if on_commit is not None:
            on_commit(answers)
        needing = [(i, out) for i, out in answers if isinstance(out, CommitResult) and out.entry is None]
        if not needing:
            break
        _add_sent(sent, supply(api, ns_id, needs_for([(files[i][0], out) for i, out in needing]), progress))
        pending = [i for i, _ in needing]
    return outcomes, sent


def needs_up_front(
    api: ApiClient, ns_id: int, files: Iterable[tuple[LocalFile, int | None]], skip: Collection[str] = frozenset()
) -> Needs:
    """Every chunk of the new small ``files`` (no revision replaced, at most `KEEP_BYTES`),
    with nonces computed here from the namespace's proof key (`ApiClient.proof_key`), so that
    they are proven (and the refused ones uploaded) before the first commit: a group of new
    small files is then prove, upload, commit, and the server commits each file once.

    Left to the commit answer: large files (the answer says which of their chunks are missing,
    so held ones are not read and hashed again) and edits (the answer names the old chunks a
    changed chunk can be sent as a patch against); everything when the server gives no key.
    Safe by `cubby.metadata.possession`: a refused proof is what an absent chunk gets, and only
    then is a chunk sent. Chunks in ``skip`` are left out (given to the server already)."""
    needs = Needs()
    kept = [lf for lf, rev in files if rev is None and lf.chunks and lf.size <= KEEP_BYTES]
    if not kept:
        return needs
    key = api.proof_key(ns_id)
    if key is None:
        return needs
    for lf in kept:
        for c in lf.chunks:
            if c.hash not in needs.where and c.hash not in skip:
                needs.add(lf, c, chunk_nonce(key.key, c.hash, c.size), key.window)
    return needs


def _add_sent(total: dict[LocalPath, tuple[int, int]], more: dict[LocalPath, tuple[int, int]]) -> None:
    for owner, (n, b) in more.items():
        prev = total.get(owner, (0, 0))
        total[owner] = (prev[0] + n, prev[1] + b)


def needs_for(pairs: Sequence[tuple[LocalFile, CommitResult]]) -> Needs:
    needs = Needs()
    for lf, res in pairs:
        by_hash = {c.hash: c for c in lf.chunks}
        for n in res.needed:
            if n.hash in by_hash:
                needs.add(lf, by_hash[n.hash], n.nonce, n.window, n.base)
    return needs


def _ns_of(api: ApiClient, remote: str) -> int:
    """The namespace a remote path lives in: the deepest mount that contains it."""
    best, ns = "", 0
    for n in api.account()["namespaces"]:
        if paths.is_within(paths.normalize(remote), n["path"]) and len(n["path"]) > len(best):
            best, ns = n["path"], int(n["ns_id"])
    return ns


def group_limit(index: int, left: int, *, first: int = FIRST_GROUP, most: int | None = None) -> int:
    """How many files the group numbered ``index`` (from 0) may take when ``left`` files are
    still to be grouped: `FIRST_GROUP`, doubling group by group up to `BATCH`, and at the end
    halving again (about half of what is left, never fewer than ``first``, and the rest whole
    when it is less than one more group of ``first``).

    Why ramps. A group is named, then proven, uploaded and committed, one step after the other,
    and at most `IN_FLIGHT` groups are with the server. With every group at `BATCH` files, the
    server waited for the whole first group to be named before its first request, and the last
    group went through its three steps alone, the other side idle: 10,000 small files spent a
    fifth of their put in that fill and drain. Small groups at both ends shorten both, and the
    groups between stay large, so the requests (each with a fixed cost on the server) are
    few."""
    most = BATCH if most is None else most
    limit = min(most, first << min(index, 20), max(first, (left + 1) // 2))
    return min(left, most) if left < limit + first else limit


def _groups(files: list[str]) -> Iterator[tuple[list[str], int]]:
    """Files in groups of at most `group_limit` files (`BATCH` between the ramps) and about
    `GROUP_BYTES` of kept bytes, each with its bytes; a file too large to keep travels alone
    (its chunks are windowed by `supply`)."""
    group: list[str] = []
    size = 0
    made = 0
    limit = BATCH  # set as each group starts, from how many files are left
    for i, p in enumerate(files):
        try:
            n = os.stat(p).st_size
        except FileNotFoundError:
            n = 0  # gone since the walk: scan_file reports it
        if n > KEEP_BYTES:
            if group:
                yield group, size
                group, size = [], 0
                made += 1
            yield [p], n
            continue
        if not group:
            limit = group_limit(made, len(files) - i)
        group.append(p)
        size += n
        if len(group) >= limit or size >= GROUP_BYTES:
            yield group, size
            group, size = [], 0
            made += 1
    if group:
        yield group, size


Named = tuple[list[LocalFile], list[Skipped], str | None]
"""A tree's group named (`upload_tree`): its files, those that could not be read, and the one
large new file to name as it is sent instead (None when there is none)."""
Sent = tuple[list[UploadResult], list[Skipped]]
"""A tree's group sent: each file's result, and the files found unreadable meanwhile."""


def upload_tree(
    api: ApiClient,
    local_dir: Path,
    remote_dir: str,
    *,
    progress: Progress | None = None,
    on_results: Callable[[list[UploadResult]], None] | None = None,
    on_skip: Callable[[Skipped], None] | None = None,
    workers: int = 4,
) -> list[UploadResult]:
    """Upload a folder: name files a group at a time (small files keep their bytes, so they
    are read once), commit each group in one request, prove or upload the chunks the server
    asks for in a few large requests, and commit again. Naming runs ahead of sending, and up to
    `IN_FLIGHT` groups are with the server at once. A file new at its path and larger than
    `STREAM_IN_TREE` is named as it is sent (`_stream_new`), on the sending side. Files whose
    content the server already has at the same path are skipped. ``on_results`` is called on
    this thread with each group's results, in group order (one call per group, so that a
    caller printing them writes a group at once).

    What is not uploaded is told to ``on_skip``, on this thread, and the rest goes on: links,
    pipes and devices, folders that cannot be listed (`walk`), and files that cannot be opened
    or were removed before they were read (`Skipped`). One unreadable file must not keep a
    whole tree from its backup, nor pass unnoticed."""
    local_dir = Path(local_dir)
    remote_dir = paths.normalize(remote_dir)
    skip = on_skip or (lambda _s: None)
    first = Precedence()  # a group's proofs before the naming of groups far behind it

    def remote_state() -> tuple[dict[str, Entry], int]:
        """What the server has below ``remote_dir``, and the namespace it is in."""
        found: dict[str, Entry] = {}
        try:
            for e in api.list(remote_dir, recursive=True):
                found[paths.key(e.path)] = e
        except NotFound:
            pass
        return found, _ns_of(api, remote_dir)

    # The server is asked while the tree is walked: two round trips the walk no longer waits for.
    with ThreadPoolExecutor(1) as asker:
        asked = asker.submit(remote_state)
        files, dirs = walk(local_dir, skip)
        existing, ns_id = asked.result()

    base = os.path.join(str(local_dir), "")  # the walk's paths all start with it

    def remote_of(p: str) -> str:
        # Sliced off as text: `Path.relative_to` parses both paths again, for each file.
        rel = p[len(base) :] if p.startswith(base) and os.sep == "/" else Path(p).relative_to(local_dir).as_posix()
        return paths.join(remote_dir, rel)

    def name_files(group: list[str]) -> tuple[list[LocalFile], list[Skipped]]:
        named: list[LocalFile] = []
        left: list[Skipped] = []
        for p in group:
            first.defer()  # a group being proven goes first: it is what the server waits for
            try:
                named.append(scan_file(p, remote_of(p), progress, keep_up_to=KEEP_BYTES))
            except (OSError, NotAFile) as exc:  # unreadable, removed or replaced since the walk: told, not fatal
                left.append(skipped_for(p, exc))
        return named, left

    def name_group(group: list[str]) -> Named:
        """The group's files named, and those that could not be; or, for a file new at its
        path and larger than `STREAM_IN_TREE` (which travels alone, `_groups`), nothing yet:
        it is named as it is sent."""
        if len(group) == 1 and _size_of(group[0]) > STREAM_IN_TREE:
            remote = remote_of(group[0])
            # (new at its path, and no file of the tree's where a folder of it must go)
            if paths.key(remote) not in existing and not any(
                existing[k].kind == "file" for a in paths.ancestors(remote) if (k := paths.key(a)) in existing
            ):
                return [], [], group[0]
        return (*name_files(group), None)

    def take(job: Future[Named]) -> tuple[list[LocalFile], str | None]:
        named, left, streamed = job.result()
        for s in left:
            skip(s)
        return named, streamed

    def stream_one(p: str) -> Sent:
        """A large new file, sent while it is named (`_stream_new`); named first and committed
        as any other file when the server gives no proof key."""
        try:
            res = _stream_new(api, Path(p), remote_of(p), progress, ns_id)
        except ReadFailed as exc:  # unreadable, removed or replaced since the walk: told, not fatal
            return [], [skipped_for(p, exc.cause)]
        if res is not None:
            return [res], []
        named, left = name_files([p])
        return send_group(named), left

    def send(scanned: list[LocalFile], streamed: str | None) -> Sent:
        return (send_group(scanned), []) if streamed is None else stream_one(streamed)

    def send_group(scanned: list[LocalFile]) -> list[UploadResult]:
        out: list[UploadResult] = []
        pending: list[tuple[LocalFile, int | None]] = []
        for lf in scanned:
            cur = existing.get(paths.key(lf.remote))
            if cur is not None and cur.kind == "file" and _same(cur, lf):
                out.append(UploadResult(cur.path, cur.rev, lf.size, len(lf.chunks), 0, 0, skipped=True))
            else:
                pending.append((lf, cur.rev if cur is not None and cur.kind == "file" else None))

        def refused(answers: list[tuple[int, Outcome]]) -> None:
            for i, res in answers:
                if isinstance(res, CubbyError):
                    raise res.__class__(f"{pending[i][0].remote}: {res.message}", code=res.code)

        outcomes, sent_by_file = commit_group(api, ns_id, pending, progress, on_commit=refused, precedence=first)
        for (lf, _), res in zip(pending, outcomes):
            if not isinstance(res, CommitResult) or res.entry is None:
                raise CubbyError("the server kept asking for chunks; giving up", code="upload_incomplete")
            s, b = sent_by_file.get(lf.local, (0, 0))
            out.append(UploadResult(res.entry.path, res.entry.rev, lf.size, len(lf.chunks), s, b))
        return out

    results: list[UploadResult] = []

    def emit(done: list[Sent]) -> None:
        for group_results, left in done:
            results.extend(group_results)
            if on_results:
                on_results(group_results)
            for s in left:
                skip(s)

    # Naming runs up to `ahead` groups ahead (one group per task: a task per 4 KiB file costs
    # more than hashing it), and sending keeps `IN_FLIGHT` groups with the server; so at most
    # ``ahead + 1 + IN_FLIGHT`` groups' kept bytes are in memory.
    #
    # Groups of files hashed holding the GIL (under `HOLD_BELOW` each, on average) are named
    # one after the other, on one thread: named side by side, each took the time of all (the
    # interpreter went round them), so the oldest, the one the server waits for, was ready
    # last. On a put of 10,000 files of 4 KiB the first group of 1,000 went out at 190-220 ms
    # instead of 80, and the server was half idle for the first 350 ms. Groups of larger files
    # are named beside each other: their hashing lets the other threads run.
    ahead = max(1, min(workers, 2))
    # (the walk's files, alive to the end, out of the collector's walks: `heap.gc_frozen`)
    with (
        gc_frozen(), ThreadPoolExecutor(1) as in_order, ThreadPoolExecutor(ahead + 1) as beside,
        Pipeline(IN_FLIGHT) as sender,
    ):
        named: deque[Future[Named]] = deque()
        try:
            started = False
            for group, size in _groups(files):
                namer = in_order if size < len(group) * HOLD_BELOW else beside
                named.append(namer.submit(name_group, group))
                # The first group alone, then each as soon as it is named, and the oldest at
                # the latest once `ahead` more wait: named beside the next ones, the first
                # took 40-50 ms instead of a few, time in which the server had nothing to do.
                while named and (len(named) > (ahead if started else 0) or (started and named[0].done())):
                    started = True
                    scanned, streamed = take(named.popleft())
                    emit(sender.submit(lambda s=scanned, q=streamed: send(s, q)))  # type: ignore[misc]
            while named:
                scanned, streamed = take(named.popleft())
                emit(sender.submit(lambda s=scanned, q=streamed: send(s, q)))  # type: ignore[misc]
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



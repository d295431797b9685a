"""A large new file is sent while it is named (`cubby.client.streamed`, `upload_file`), against
a real server on loopback: its first window reaches the server before the file has been read
to its end, it is committed once, a copy of bytes the user already holds stops the offers after
a window, a file rewritten meanwhile is refused, and the paths that must not stream (a file
being replaced, a server without proof keys) still commit first. In a folder, a large new file
streams too; gone before it is read, it is reported skipped, while a dropped connection ends
the put."""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import pytest

from cubby.client import upload
from cubby.client.api import ApiClient
from cubby.client.download import download_file, download_tree
from cubby.client.localfiles import FileChanged, Skipped
from cubby.client.upload import upload_file
from cubby.errors import Conflict, CubbyError, NotFound
from tests.integration.test_upload_pipeline import Keyless

MiB = 1024 * 1024


@pytest.fixture
def token(live, request):
    return live.add_user("s" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10])


@pytest.fixture(autouse=True)
def small_windows(monkeypatch):
    monkeypatch.setattr(upload, "UPLOAD_WINDOW", 1 * MiB)


def _data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class Watching(ApiClient):
    """Records every request of an upload in order, with how many bytes of the file had been
    named (the progress callback's count) when it was made. With ``gate_at``, naming waits
    there (at most 30 s) until a prove request has been made: a client that names the whole
    file before its first request would make none in that time."""

    def __init__(self, *a, gate_at: int | None = None, **kw):
        super().__init__(*a, **kw)
        self.named = 0
        self.log: list[tuple[str, int, int]] = []  # (kind, named so far, items)
        self.lock = threading.Lock()
        self.gate_at = gate_at
        self.proved = threading.Event()
        self.gate_timed_out = False

    def progress(self, n: int) -> None:
        with self.lock:
            self.named += n
            wait = self.gate_at is not None and self.named >= self.gate_at and not self.proved.is_set()
        if wait and not self.proved.wait(30):
            self.gate_timed_out = True

    def _note(self, kind: str, items: int) -> None:
        with self.lock:
            self.log.append((kind, self.named, items))

    def commit(self, *a, **kw):
        self._note("commit", 1)
        return super().commit(*a, **kw)

    def prove(self, ns_id, proofs, windows=None):
        if proofs:
            self._note("prove", len(proofs))
            self.proved.set()
        return super().prove(ns_id, proofs, windows)

    def upload_chunks(self, ns_id, items):
        if items:
            self._note("upload", len(items))
        return super().upload_chunks(ns_id, items)

    def kinds(self, kind: str) -> list[tuple[str, int, int]]:
        return [e for e in self.log if e[0] == kind]


def test_a_new_large_file_is_sent_while_it_is_named_and_committed_once(live, token, tmp_path):
    data = _data(1, 12 * MiB)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    with Watching(live.url, token, gate_at=len(data) // 2) as api:
        res = upload_file(api, src, "/big.bin", progress=api.progress)
        # Naming and sending both count: every byte named once, every byte sent once.
        assert api.named == 2 * len(data)
        # The first window was proven while half of the file was still unread, and the commit
        # came once, after every chunk was sent.
        assert not api.gate_timed_out
        proves = api.kinds("prove")
        assert proves and proves[0][1] <= len(data) // 2
        assert [k for k, *_ in api.log].count("commit") == 1 and api.log[-1][0] == "commit"
        assert res.bytes_sent == len(data) and res.chunks_sent == res.chunks
        download_file(api, "/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_a_copy_of_held_bytes_stops_the_offers_after_one_window(live, token, tmp_path):
    """The same bytes put again at another path: the server accepts the first window's proofs,
    so the rest is not proven (no reading back on the server) and the commit needs nothing."""
    data = _data(2, 64 * MiB)
    src = tmp_path / "copy.bin"
    src.write_bytes(data)
    with ApiClient(live.url, token) as api:
        first = upload_file(api, src, "/a.bin")
    with Watching(live.url, token) as api:
        again = upload_file(api, src, "/b.bin")
    assert again.bytes_sent == 0 and again.chunks_sent == 0 and again.chunks == first.chunks
    proven = sum(n for _, _, n in api.kinds("prove"))
    # At most the windows already in the pipeline when the first answer came (`IN_FLIGHT` and
    # `PROVE_AHEAD` windows of 1 MiB here), never the whole file.
    assert 0 < len(api.kinds("prove")) <= upload.IN_FLIGHT + upload.PROVE_AHEAD + 2
    assert proven < first.chunks // 2
    assert not api.kinds("upload")
    assert [k for k, *_ in api.log].count("commit") == 1


def test_a_file_rewritten_while_it_is_streamed_is_refused_and_nothing_is_committed(live, token, tmp_path):
    src = tmp_path / "moving.bin"
    src.write_bytes(_data(3, 8 * MiB))

    class Rewriting(Watching):
        def prove(self, ns_id, proofs, windows=None):
            if not self.log:
                src.write_bytes(_data(4, 8 * MiB))  # same size, other bytes, mid-upload
            return super().prove(ns_id, proofs, windows)

    with Rewriting(live.url, token) as api, pytest.raises(FileChanged):
        upload_file(api, src, "/moving.bin")
    with ApiClient(live.url, token) as api, pytest.raises(NotFound):
        api.stat("/moving.bin")


def test_a_file_being_replaced_is_committed_first(live, token, tmp_path):
    """Replacing a file: the commit answer names only the changed chunks (and the old ones to
    patch them against), so the new version is named whole and committed before anything is
    proven."""
    data = _data(5, 8 * MiB)
    src = tmp_path / "edited.bin"
    src.write_bytes(data)
    with ApiClient(live.url, token) as api:
        upload_file(api, src, "/edited.bin")
    edited = bytearray(data)
    edited[4 * MiB : 4 * MiB + 100] = b"x" * 100
    src.write_bytes(bytes(edited))
    with Watching(live.url, token) as api:
        res = upload_file(api, src, "/edited.bin")
        assert api.log[0][0] == "commit"
        assert res.chunks_sent < res.chunks
        download_file(api, "/edited.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == bytes(edited)


def test_without_a_proof_key_a_large_file_is_committed_first(live, token, tmp_path):
    data = _data(6, 6 * MiB)
    src = tmp_path / "keyless.bin"
    src.write_bytes(data)

    class KeylessWatching(Keyless, Watching):
        """`Keyless`'s account answers, `Watching`'s log."""

    with KeylessWatching(live.url, token) as api:
        res = upload_file(api, src, "/keyless.bin")
        assert api.log[0][0] == "commit"
        assert res.bytes_sent == len(data)
        download_file(api, "/keyless.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_repeated_content_is_offered_once(live, token, tmp_path):
    """A file mostly of zeros (a disk image's free space), which the chunker cuts into equal
    chunks of its largest size: each distinct chunk is proven and sent once, and the file
    still downloads whole."""
    data = bytes(24 * MiB) + _data(8, 3 * MiB)
    src = tmp_path / "repeats.bin"
    src.write_bytes(data)
    with Watching(live.url, token) as api:
        res = upload_file(api, src, "/repeats.bin")
        proven = sum(n for _, _, n in api.kinds("prove"))
        assert proven == res.chunks_sent < res.chunks
        assert res.bytes_sent < len(data) // 2
        download_file(api, "/repeats.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_in_a_tree_a_large_new_file_is_streamed_and_a_replaced_one_commits_first(live, token, tmp_path, monkeypatch):
    """`cubby put FOLDER`: the new file above `STREAM_IN_TREE` is committed once, on its own
    (streamed), the small ones and the one below it in batches; put again after an edit, the
    large file exists and goes through the batch's commit-first exchange. Everything downloads
    byte-identical."""
    monkeypatch.setattr(upload, "STREAM_IN_TREE", 8 * MiB)
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    big = _data(9, 12 * MiB)
    (root / "sub" / "big.bin").write_bytes(big)
    (root / "sub" / "mid.bin").write_bytes(_data(10, 6 * MiB))  # over KEEP_BYTES, under STREAM_IN_TREE
    for i in range(3):
        (root / f"s{i}.txt").write_bytes(_data(20 + i, 5000))

    class Batches(Watching):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.batched: list[str] = []

        def commit_batch(self, reqs):
            self.batched += [r["path"] for r in reqs]
            return super().commit_batch(reqs)

    with Batches(live.url, token) as api:
        results = upload.upload_tree(api, root, "/t")
        assert sorted(r.path for r in results) == ["/t/s0.txt", "/t/s1.txt", "/t/s2.txt", "/t/sub/big.bin", "/t/sub/mid.bin"]
        assert len(api.kinds("commit")) == 1 and "/t/sub/big.bin" not in api.batched
        assert set(api.batched) == {"/t/s0.txt", "/t/s1.txt", "/t/s2.txt", "/t/sub/mid.bin"}
    edited = bytearray(big)
    edited[6 * MiB : 6 * MiB + 10] = b"0123456789"
    (root / "sub" / "big.bin").write_bytes(bytes(edited))
    with Batches(live.url, token) as api:
        again = {r.path: r for r in upload.upload_tree(api, root, "/t")}
        assert not api.kinds("commit") and api.batched.count("/t/sub/big.bin") >= 1
        assert again["/t/sub/big.bin"].chunks_sent < again["/t/sub/big.bin"].chunks
        assert all(again[f"/t/s{i}.txt"].skipped for i in range(3)) and again["/t/sub/mid.bin"].skipped
        download_tree(api, "/t", tmp_path / "back")
    assert (tmp_path / "back" / "sub" / "big.bin").read_bytes() == bytes(edited)
    assert (tmp_path / "back" / "sub" / "mid.bin").read_bytes() == (root / "sub" / "mid.bin").read_bytes()
    for i in range(3):
        assert (tmp_path / "back" / f"s{i}.txt").read_bytes() == (root / f"s{i}.txt").read_bytes()


def _big_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[Skipped]]:
    """A folder with one file to stream (`STREAM_IN_TREE` lowered) and a small one, and the
    list the upload's skipped items go to."""
    monkeypatch.setattr(upload, "STREAM_IN_TREE", 4 * MiB)
    root = tmp_path / "tree"
    root.mkdir()
    (root / "big.bin").write_bytes(_data(30, 6 * MiB))
    (root / "a.txt").write_bytes(b"small\n")
    return root, []


def test_in_a_tree_a_large_file_gone_before_it_is_streamed_is_skipped_as_vanished(live, token, tmp_path, monkeypatch):
    root, skipped = _big_tree(tmp_path, monkeypatch)

    class Deleting(Watching):
        def proof_key(self, ns_id):
            (root / "big.bin").unlink(missing_ok=True)  # after the walk and the naming side's look
            return super().proof_key(ns_id)

    with Deleting(live.url, token) as api:
        results = upload.upload_tree(api, root, "/v", on_skip=skipped.append)
        assert [r.path for r in results] == ["/v/a.txt"]
        assert [(Path(s.local).name, s.code) for s in skipped] == [("big.bin", "vanished")]
        with pytest.raises(NotFound):
            api.stat("/v/big.bin")


def test_in_a_tree_a_network_failure_while_streaming_is_an_error_not_a_skipped_file(live, token, tmp_path, monkeypatch):
    """A dropped connection is an `OSError` too: it must end the put, not be reported as an
    unreadable file while the rest is committed."""
    root, skipped = _big_tree(tmp_path, monkeypatch)
    (root / "a.txt").unlink()  # the large file alone: nothing else could raise the error

    class Dropping(Watching):
        def upload_chunks(self, ns_id, items):
            raise ConnectionError("connection dropped by the test")

    with Dropping(live.url, token) as api, pytest.raises(ConnectionError):
        upload.upload_tree(api, root, "/w", on_skip=skipped.append)
    assert skipped == []


def test_a_large_file_under_a_file_is_refused_before_any_byte_is_sent(live, token, tmp_path):
    """Its commit is bound to fail (`not_a_folder`): the file is not streamed, and the commit,
    made first, says so."""
    (tmp_path / "notes.txt").write_text("notes\n")
    src = tmp_path / "big.bin"
    src.write_bytes(_data(40, 6 * MiB))
    with Watching(live.url, token) as api:
        upload_file(api, tmp_path / "notes.txt", "/notes.txt")
        api.log.clear()
        with pytest.raises(Conflict) as refused:
            upload_file(api, src, "/notes.txt/deeper/big.bin")
        assert refused.value.code == "not_a_folder"
        assert [k for k, *_ in api.log] == ["commit"]


def test_in_a_tree_a_large_file_where_a_file_stands_for_its_folder_is_not_streamed(live, token, tmp_path, monkeypatch):
    root, _ = _big_tree(tmp_path, monkeypatch)
    (root / "a.txt").unlink()
    (root / "big.bin").rename(tmp_path / "big.bin")
    (root / "sub").mkdir()
    (tmp_path / "big.bin").rename(root / "sub" / "big.bin")
    with Watching(live.url, token) as api:
        (tmp_path / "sub.txt").write_text("a file where the folder goes\n")
        upload_file(api, tmp_path / "sub.txt", "/x/sub")
        api.log.clear()
        with pytest.raises(CubbyError) as refused:  # (a batch's answer keeps the code, not the class)
            upload.upload_tree(api, root, "/x")
        assert refused.value.code == "not_a_folder"
        assert not api.kinds("prove") and not api.kinds("upload")

"""The upload path of `cubby.client.upload` against a real server on loopback: pipelined
windows, bytes kept from the naming pass, a file that changes under an upload (detected by
the client's stamp or hash, or, when the stamp cannot see it, by the server's verification),
resumption, and a folder of small files in pipelined groups."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from cubby.client import upload
from cubby.client.api import ApiClient, commit_body
from cubby.client.download import download_file, download_tree
from cubby.client.localfiles import FileChanged, LocalFile, scan_file
from cubby.client.upload import needs_for, supply, upload_file, upload_tree
from cubby.client.windows import KEEP_BYTES
from cubby.errors import BadRequest, Conflict, NotFound


@pytest.fixture
def api(live, request):
    name = "u" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10]
    with ApiClient(live.url, live.add_user(name)) as client:
        yield client


class Counting(ApiClient):
    """Counts the chunk bytes each upload request carries (and can fail the n-th request)."""

    def __init__(self, *a, fail_after: int | None = None, **kw):
        super().__init__(*a, **kw)
        self.uploads: list[int] = []
        self.fail_after = fail_after
        self.started = 0
        self.lock = threading.Lock()  # uploads run on two threads at once

    def upload_chunks(self, ns_id, items):
        with self.lock:
            self.started += 1
            fail = self.fail_after is not None and self.started > self.fail_after
        if fail:
            raise ConnectionError("interrupted by the test")
        n = super().upload_chunks(ns_id, items)
        with self.lock:
            self.uploads.append(sum(len(d) for _, d in items))
        return n


def _data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def test_large_file_goes_in_bounded_pipelined_windows(live, api, tmp_path, monkeypatch):
    monkeypatch.setattr(upload, "UPLOAD_WINDOW", 2 * 1024 * 1024)
    data = _data(1, 12 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    token = api.http.headers["Authorization"].split()[1]
    with Counting(live.url, token) as counting:
        res = upload_file(counting, src, "/big.bin")
    assert res.bytes_sent == len(data) and res.chunks_sent == res.chunks > 4
    assert len(counting.uploads) >= 4 and max(counting.uploads) < 2 * 1024 * 1024 + 4 * 1024 * 1024
    download_file(api, "/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_small_file_keeps_its_bytes_and_is_not_read_again(api, tmp_path, monkeypatch):
    src = tmp_path / "small.bin"
    data = _data(2, 300_000)
    src.write_bytes(data)
    lf = scan_file(src, "/small.bin", keep_up_to=KEEP_BYTES)
    assert lf.data == data and lf.stamp is not None
    res = api.commit("/small.bin", lf.size, lf.refs)
    src.unlink()  # the upload must not need the file any more
    supply(api, api.account()["root_ns"], needs_for([(lf, res)]))
    assert api.commit("/small.bin", lf.size, lf.refs).entry is not None
    download_file(api, "/small.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def _named_then_changed(api: ApiClient, tmp_path: Path, *, keep_stamp: bool) -> tuple[LocalFile, object]:
    """A large file named, then rewritten with other bytes of the same size."""
    src = tmp_path / "moving.bin"
    src.write_bytes(_data(3, 6 * 1024 * 1024))
    lf = scan_file(src, "/moving.bin")
    assert lf.data is None and lf.stamp is not None
    res = api.commit("/moving.bin", lf.size, lf.refs)
    src.write_bytes(_data(4, 6 * 1024 * 1024))
    if keep_stamp:
        # What a write in the same clock tick as the naming looks like: the stamp still matches.
        st = os.stat(src)
        lf.stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    return lf, res


def test_changed_file_is_caught_by_its_stamp(api, tmp_path):
    lf, res = _named_then_changed(api, tmp_path, keep_stamp=False)
    with pytest.raises(FileChanged):
        supply(api, api.account()["root_ns"], needs_for([(lf, res)]))
    with pytest.raises(NotFound):
        api.stat("/moving.bin")


def test_a_file_deleted_after_it_was_named_is_a_changed_file(api, tmp_path):
    """A sync client's editor may delete a file between the scan and the upload: the upload
    reports it changed (the sync drops it and scans again) instead of failing the pass."""
    lf, res = _named_then_changed(api, tmp_path, keep_stamp=False)
    lf.local.unlink()
    with pytest.raises(FileChanged):
        supply(api, api.account()["root_ns"], needs_for([(lf, res)]))
    with pytest.raises(NotFound):
        api.stat("/moving.bin")


def test_changed_file_without_stamp_is_caught_by_hashing(api, tmp_path):
    lf, res = _named_then_changed(api, tmp_path, keep_stamp=False)
    lf.stamp = None  # as a LocalFile rebuilt from saved state has
    with pytest.raises(FileChanged):
        supply(api, api.account()["root_ns"], needs_for([(lf, res)]))


def test_change_the_stamp_cannot_see_is_refused_by_the_server(api, tmp_path):
    lf, res = _named_then_changed(api, tmp_path, keep_stamp=True)
    ns = api.account()["root_ns"]
    with pytest.raises(FileChanged):
        supply(api, ns, needs_for([(lf, res)]))
    # Nothing was stored under the old names, so the commit still needs every chunk.
    again = api.commit("/moving.bin", lf.size, lf.refs)
    assert again.entry is None and {n.hash for n in again.needed} == {c.hash for c in lf.chunks}


def test_interrupted_upload_resends_only_missing_chunks(live, api, tmp_path, monkeypatch):
    monkeypatch.setattr(upload, "UPLOAD_WINDOW", 2 * 1024 * 1024)
    data = _data(5, 12 * 1024 * 1024)
    src = tmp_path / "resume.bin"
    src.write_bytes(data)
    token = api.http.headers["Authorization"].split()[1]
    with Counting(live.url, token, fail_after=2) as first, pytest.raises(ConnectionError):
        upload_file(first, src, "/resume.bin")
    stored = sum(first.uploads)
    assert len(first.uploads) == 2 and stored > 0
    with pytest.raises(NotFound):
        api.stat("/resume.bin")
    res = upload_file(api, src, "/resume.bin")
    assert res.bytes_sent == len(data) - stored
    download_file(api, "/resume.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_groups_of_small_files_are_named_in_order_one_file_at_a_time(api, tmp_path, monkeypatch):
    """Files hashed holding the GIL gain nothing from being named side by side, and the group
    the server waits for would be ready last: they are named on one thread, in the walk's
    order. (A pause in each naming leaves room for any overlap to show.)"""
    monkeypatch.setattr(upload, "BATCH", 8)
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(48):
        (root / f"f{i:02d}.txt").write_bytes(_data(300 + i, 2000))
    lock = threading.Lock()
    active = most = 0
    order: list[str] = []
    real = upload.scan_file

    def scan(p, *args, **kw):  # type: ignore[no-untyped-def]
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
            order.append(os.path.basename(p))
        try:
            threading.Event().wait(0.002)
            return real(p, *args, **kw)
        finally:
            with lock:
                active -= 1

    monkeypatch.setattr(upload, "scan_file", scan)
    results = upload_tree(api, root, "/ordered")
    assert len(results) == 48 and most == 1
    assert order == sorted(order) and len(order) == 48


def test_tree_of_small_files_in_pipelined_groups(api, tmp_path, monkeypatch):
    monkeypatch.setattr(upload, "BATCH", 7)
    root = tmp_path / "tree"
    want: dict[str, bytes] = {}
    for i in range(40):
        p = root / f"d{i % 3}" / f"f{i:02d}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        body = _data(100 + i, 1000 + i) if i != 5 else b""
        p.write_bytes(body)
        want[f"/t/d{i % 3}/f{i:02d}.txt"] = body
    big = root / "big.bin"
    big.write_bytes(_data(9, KEEP_BYTES + 1))
    want["/t/big.bin"] = big.read_bytes()
    (root / "empty").mkdir()
    told: list[list[str]] = []
    results = upload_tree(api, root, "/t", on_results=lambda rs: told.append([r.path for r in rs]))
    assert sorted(r.path for r in results) == sorted(want)
    # told in order, a group at a time: small files together, the large one alone
    assert [p for group in told for p in group] == [r.path for r in results]
    assert ["/t/big.bin"] in told and len(told) < len(results) - 1
    assert sum(r.bytes_sent for r in results) == sum(len(b) for b in want.values())
    download_tree(api, "/t", tmp_path / "back")
    for path, body in want.items():
        assert (tmp_path / "back" / path.removeprefix("/t/")).read_bytes() == body
    assert (tmp_path / "back" / "empty").is_dir()
    again = upload_tree(api, root, "/t")
    assert all(r.skipped for r in again) and len(again) == len(want)


@pytest.mark.parametrize("size", [0, 1, 4096, 256 * 1024, 256 * 1024 + 1, 3 * 1024 * 1024])
def test_naming_a_kept_file_gives_the_chunker_s_chunks(tmp_path, size):
    from cubby.core.chunking import chunk_file

    src = tmp_path / "f.bin"
    src.write_bytes(_data(size, size))
    kept = scan_file(src, "/f.bin", keep_up_to=KEEP_BYTES)
    streamed = [(c.offset, c.length, c.hash) for c in chunk_file(src, with_data=False)]
    assert kept.data == src.read_bytes()
    assert [(c.offset, c.size, c.hash) for c in kept.chunks] == streamed
    assert scan_file(src, "/f.bin").chunks == kept.chunks


class CountingCalls(ApiClient):
    """Counts the commit, prove and upload requests a put makes."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: dict[str, int] = {"commit_batch": 0, "prove": 0, "upload": 0}
        self.lock = threading.Lock()

    def _count(self, kind: str) -> None:
        with self.lock:
            self.calls[kind] += 1

    def commit_batch(self, reqs):
        self._count("commit_batch")
        return super().commit_batch(reqs)

    def prove(self, ns_id, proofs, windows=None):
        if proofs:
            self._count("prove")
        return super().prove(ns_id, proofs, windows)

    def upload_chunks(self, ns_id, items):
        if items:
            self._count("upload")
        return super().upload_chunks(ns_id, items)


def test_new_small_files_are_proven_sent_and_committed_in_one_round(live, api, tmp_path):
    """A group of new small files is one prove (nonces from the account's proof key), one
    upload of the refused chunks and one commit, however many files: no bytes before the
    server refused their proof, each file sent once and committed once."""
    root = tmp_path / "small"
    root.mkdir()
    for i in range(50):
        (root / f"f{i:02d}.bin").write_bytes(_data(200 + i, 4096))
    token = api.http.headers["Authorization"].split()[1]
    with CountingCalls(live.url, token) as counting:
        results = upload_tree(counting, root, "/s")
    assert len(results) == 50 and all(r.bytes_sent == 4096 and r.chunks_sent == 1 for r in results)
    assert counting.calls == {"commit_batch": 1, "prove": 1, "upload": 1}
    download_tree(api, "/s", tmp_path / "back")
    for i in range(50):
        assert (tmp_path / "back" / f"f{i:02d}.bin").read_bytes() == _data(200 + i, 4096)


class Keyless(CountingCalls):
    """A client of a server that gives no proof keys (an older one)."""

    def account(self):
        body = super().account()
        self.proof_keys.clear()
        for n in body["namespaces"]:
            n.pop("proof_key", None)
        return body


def test_without_a_proof_key_the_commit_asks_first(live, api, tmp_path):
    """Against a server that gives no proof key, small files go as before: commit, prove the
    chunks the answer names with its nonces, upload, commit."""
    root = tmp_path / "small"
    root.mkdir()
    for i in range(20):
        (root / f"f{i:02d}.bin").write_bytes(_data(500 + i, 4096))
    token = api.http.headers["Authorization"].split()[1]
    with Keyless(live.url, token) as counting:
        results = upload_tree(counting, root, "/k")
        assert counting.proof_key(counting.account()["root_ns"]) is None
    assert len(results) == 20 and all(r.bytes_sent == 4096 for r in results)
    assert counting.calls == {"commit_batch": 2, "prove": 1, "upload": 1}


def test_a_single_small_file_is_proven_before_its_commit(live, api, tmp_path):
    src = tmp_path / "one.bin"
    src.write_bytes(_data(600, 5000))
    token = api.http.headers["Authorization"].split()[1]
    with CountingCalls(live.url, token) as counting:
        commits = []
        orig = counting.commit
        counting.commit = lambda *a, **kw: commits.append(1) or orig(*a, **kw)  # type: ignore[method-assign]
        res = upload_file(counting, src, "/one.bin")
    assert res.bytes_sent == 5000 and len(commits) == 1
    assert counting.calls["prove"] == 1 and counting.calls["upload"] == 1
    # The same bytes again, by the same user at another path: proven, nothing sent.
    again = upload_file(api, src, "/two.bin")
    assert again.bytes_sent == 0 and again.chunks_sent == 0


def test_a_stale_proof_key_is_asked_for_again(live, api):
    """A key near the end of its validity is not used: the client asks the account again."""
    ns = api.account()["root_ns"]
    first = api.proof_key(ns)
    assert first is not None
    api.proof_keys[ns] = type(first)(first.window - 5, first.key, 0.0)  # expired
    fresh = api.proof_key(ns)
    assert fresh is not None and fresh.window == first.window and fresh.until > 0.0


def test_chunks_held_elsewhere_are_proven_not_sent_however_small(live, api, tmp_path):
    """A chunk the server holds is never sent again, whoever sends it: another user putting the
    same large and small files proves both and sends no bytes."""
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "big.bin").write_bytes(_data(300, 300_000))
    (root / "small.bin").write_bytes(_data(301, 4096))
    first = upload_tree(api, root, "/m")
    assert sum(r.bytes_sent for r in first) == 300_000 + 4096
    other = live.add_user("other-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:8])
    with CountingCalls(live.url, other) as counting:
        again = {Path(r.path).name: r for r in upload_tree(counting, root, "/m")}
    assert again["big.bin"].bytes_sent == 0 and again["small.bin"].bytes_sent == 0
    assert counting.calls.get("upload", 0) == 0 and counting.calls["prove"] == 1
    assert counting.calls["commit_batch"] == 1


def test_a_kept_file_s_stamp_is_the_one_stat_gives(tmp_path):
    """Small files are named on one descriptor (fstat before and after the read): the stamp
    kept is the file's own, and a file above the limit is named in pieces, its bytes not kept."""
    src = tmp_path / "f.bin"
    src.write_bytes(_data(5, 5000))
    st = os.stat(src)
    lf = scan_file(str(src), "/f.bin", keep_up_to=KEEP_BYTES)  # as a folder's walk gives it: text
    assert lf.stamp == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    assert lf.data == src.read_bytes() and lf.local == str(src) and lf.size == 5000
    big = scan_file(src, "/f.bin", keep_up_to=4999)
    assert big.data is None and big.chunks == lf.chunks and big.stamp == lf.stamp


@pytest.mark.parametrize("files", [0, 1, 127, 128, 300, 1000, 2500, 10_000, 123_457])
def test_group_sizes_ramp_up_and_down_and_cover_every_file(files):
    """`group_limit`: every file in exactly one group, none larger than `BATCH`; the first
    group small (the server starts early), the last ones small (no long tail alone)."""
    sizes: list[int] = []
    left = files
    while left:
        n = upload.group_limit(len(sizes), left)
        assert 0 < n <= min(left, upload.BATCH)
        sizes.append(n)
        left -= n
    assert sum(sizes) == files
    if files > 2 * upload.FIRST_GROUP:
        assert sizes[0] == upload.FIRST_GROUP and sizes[-1] < 2 * upload.FIRST_GROUP
    if files >= 10_000:
        assert sizes.count(upload.BATCH) >= files // upload.BATCH - 3


class ProvingAhead(ApiClient):
    """Holds each prove until ``together`` proves are out at once (so a client that proves only
    as many windows as it uploads never gets past the first), counts the uploads running at
    once, and runs ``on_prove`` before the first prove is answered."""

    def __init__(self, *a, together: int, on_prove=None, **kw):
        super().__init__(*a, **kw)
        self.together, self.on_prove = together, on_prove
        self.lock = threading.Lock()
        self.out = 0
        self.all_out = threading.Event()
        self.uploading = self.most_uploading = 0

    def prove(self, ns_id, proofs, windows=None):
        with self.lock:
            self.out += 1
            if self.out >= self.together:
                self.all_out.set()
        assert self.all_out.wait(60), "the windows' proofs were not sent ahead of their uploads"
        if self.on_prove is not None:
            self.on_prove()
            self.on_prove = None
        return super().prove(ns_id, proofs, windows)

    def upload_chunks(self, ns_id, items):
        with self.lock:
            self.uploading += 1
            self.most_uploading = max(self.most_uploading, self.uploading)
        try:
            return super().upload_chunks(ns_id, items)
        finally:
            with self.lock:
                self.uploading -= 1


def _new_large_file(api, tmp_path, name: str, seed: int):
    src = tmp_path / name
    data = _data(seed, 16 * 1024 * 1024)
    src.write_bytes(data)
    lf = scan_file(src, "/" + name)
    return data, lf, api.commit("/" + name, lf.size, lf.refs)


def test_windows_are_proven_ahead_of_their_uploads_holding_no_more_bytes(live, api, tmp_path, monkeypatch):
    """The server pads a refused proof to what reading the window would have cost it, so a
    window's proof waits about as long as its upload takes: windows beyond ``in_flight`` are
    proven ahead, holding no bytes, and read again (their file's stamp unchanged) once refused.
    Only ``in_flight`` windows are read or uploaded at once."""
    monkeypatch.setattr(upload, "UPLOAD_WINDOW", 1024 * 1024)
    data, lf, res = _new_large_file(api, tmp_path, "ahead.bin", 21)
    token = api.http.headers["Authorization"].split()[1]
    with ProvingAhead(live.url, token, together=3) as client:
        supply(client, api.account()["root_ns"], needs_for([(lf, res)]), in_flight=1, ahead=2)
    assert client.most_uploading == 1
    assert api.commit("/ahead.bin", lf.size, lf.refs).entry is not None
    download_file(api, "/ahead.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data


def test_a_file_changed_between_its_proof_and_its_upload_is_a_changed_file(live, api, tmp_path, monkeypatch):
    """A window proven ahead is read again for its upload: a file rewritten in between is
    caught by its stamp, and nothing is committed."""
    monkeypatch.setattr(upload, "UPLOAD_WINDOW", 1024 * 1024)
    _, lf, res = _new_large_file(api, tmp_path, "rewritten.bin", 22)
    token = api.http.headers["Authorization"].split()[1]

    def rewrite() -> None:
        lf.local.write_bytes(_data(23, lf.size))

    with ProvingAhead(live.url, token, together=2, on_prove=rewrite) as client, pytest.raises(FileChanged):
        supply(client, api.account()["root_ns"], needs_for([(lf, res)]), in_flight=1, ahead=2)
    again = api.commit("/rewritten.bin", lf.size, lf.refs)
    assert again.entry is None and again.needed


def test_a_batch_s_refusals_come_back_as_the_errors_they_are_alone(api):
    """Each refused commit of a batch carries the status it would have had alone, so the client
    rebuilds the same error: a file in the way of a folder is a `Conflict` (``not_a_folder``),
    as a single commit says, not a bad request; the sync engine leaves conflicts to its next
    plan and reports the rest as failures."""
    api.commit("/file.txt", 0, [], None, None)
    ok, stale, in_the_way, bad = api.commit_batch([
        commit_body("/ok.txt", 0, [], None, None),
        commit_body("/file.txt", 0, [], 999_999, None),
        commit_body("/file.txt/inner.txt", 0, [], None, None),
        commit_body("/bad\\name", 0, [], None, None),
    ])
    assert not isinstance(ok, Exception) and ok.entry is not None and ok.entry.path == "/ok.txt"
    assert isinstance(stale, Conflict) and stale.code == "conflict"
    assert isinstance(in_the_way, Conflict) and in_the_way.code == "not_a_folder"
    with pytest.raises(Conflict) as alone:
        api.commit("/file.txt/inner.txt", 0, [], None, None)
    assert alone.value.code == in_the_way.code and type(alone.value) is type(in_the_way)
    assert isinstance(bad, BadRequest) and not isinstance(bad, Conflict)

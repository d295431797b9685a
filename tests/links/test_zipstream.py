"""The zip of a folder is produced while it is read: one chunk in memory at a time, every byte
identical, folders (empty ones too) kept; and the folder walk behind it pages through any size."""

from __future__ import annotations

import hashlib
import io
import random
import zipfile

import pytest

from cubby.core.zipstream import ZipMember, zip_stream
from cubby.metadata.links import WALK_PAGE, LinkStore
from cubby.metadata.store import open_store
from cubby.model import ChunkRef, CommitRequest

pytestmark = pytest.mark.xdist_group("links")
CHUNK = 64 * 1024


def _file(name: str, data: bytes, store: dict[str, bytes]) -> ZipMember:
    refs = []
    for i in range(0, len(data), CHUNK):
        piece = data[i : i + CHUNK]
        h = hashlib.sha256(piece).hexdigest()
        store[h] = piece
        refs.append(ChunkRef(h, len(piece)))
    return ZipMember(name, "file", len(data), 1_700_000_000.0, tuple(refs))


def test_each_chunk_is_sent_before_the_next_is_read() -> None:
    rng = random.Random(5)
    chunks: dict[str, bytes] = {}
    files = {"top/a.bin": rng.randbytes(5 * CHUNK + 7), "top/sub/ü.txt": b"small", "top/empty": b""}
    members = [ZipMember("top", "folder"), ZipMember("top/sub", "folder"), ZipMember("top/nothing here", "folder")]
    members += [_file(name, data, chunks) for name, data in files.items()]
    events: list[str] = []

    def read_chunk(h: str) -> bytes:
        events.append("read")
        return chunks[h]

    pieces = []
    for piece in zip_stream(iter(members), read_chunk):
        events.append("sent")
        pieces.append(piece)
    # Streaming, not buffering: no two chunk reads without the first one's bytes sent between.
    assert "read,read" not in ",".join(events)
    assert events.count("read") == sum(len(m.chunks) for m in members)
    assert max(len(p) for p in pieces) <= CHUNK + 1024
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as zf:
        assert zf.testzip() is None
        assert {i.filename: zf.read(i) for i in zf.infolist() if not i.is_dir()} == files
        assert {i.filename for i in zf.infolist() if i.is_dir()} == {"top/", "top/sub/", "top/nothing here/"}
        assert zf.getinfo("top/a.bin").date_time[0] >= 2023


def test_folder_walk_pages_through_a_large_folder(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    try:
        user, _ = store.create_user("walker")
        n = 2 * WALK_PAGE + 37  # more than two pages
        reqs = [CommitRequest(f"/big/d{i % 7}/f{i:05}.txt", 0, ()) for i in range(n)]
        reqs.append(CommitRequest("/bigger-sibling.txt", 0, ()))  # sorts right after "/big": must stay out
        store.commit_many(user.id, user.root_ns, reqs)
        items = list(LinkStore(store.db).walk(user.root_ns, "/big"))
    finally:
        store.close()
    files = [i.rel for i in items if i.kind == "file"]
    folders = [i.rel for i in items if i.kind == "folder"]
    assert sorted(files) == sorted(f"d{i % 7}/f{i:05}.txt" for i in range(n)) and len(set(files)) == n
    assert sorted(folders) == [f"d{k}" for k in range(7)]
    seen: set[str] = set()
    for item in items:  # parents before children, so a zip can be unpacked in order
        parent = item.rel.rpartition("/")[0]
        assert not parent or parent in seen
        seen.add(item.rel)

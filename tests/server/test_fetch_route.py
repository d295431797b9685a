"""The chunk fetch route through real HTTP on loopback: its body's length is stated up front
(a Content-Length from the chunks' rows, not chunked encoding), chunks come whole and in the
order asked whether stored raw (sent as views of the pack read) or compressed, a chunk the
store cannot read mid-answer cuts the body short (an error for the client, never wrong bytes),
and a list with one chunk the token may not read is refused whole."""

from __future__ import annotations

import hashlib
import os
import sqlite3

import httpx
import pytest

from cubby.client.api import ApiClient
from cubby.core import frames
from cubby.core.chunking import chunk_bytes
from cubby.errors import CubbyError
from cubby.server.blocks import FETCHES_FROM_DISK
from tests.server.test_api import upload_bytes


def text_bytes(n: int, seed: int) -> bytes:
    """Compressible bytes (stored zstd-compressed) that differ per seed."""
    words = [f"w{seed}-{i % 97}-{(i * 7919) % 1013} " for i in range(n // 8 + 1)]
    return "".join(words).encode()[:n]


def parse_frames(body: bytes) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(body):
        raw, length = frames.HEADER.unpack_from(body, pos)
        pos += frames.HEADER.size
        out.append((raw.hex(), body[pos : pos + length]))
        pos += length
    return out


def fetch(c: httpx.Client, hashes: list[str]) -> httpx.Response:
    return c.post("/api/v1/blocks/fetch", json={"hashes": hashes})


def test_fetch_states_its_length_and_sends_raw_and_compressed_chunks_whole_in_order(users):
    a = users.alice
    raw_data = os.urandom(3 * 1024 * 1024 + 777)
    text = text_bytes(2 * 1024 * 1024, seed=1)
    upload_bytes(a, "/raw.bin", raw_data)
    upload_bytes(a, "/text.txt", text)
    chunks = chunk_bytes(raw_data) + chunk_bytes(text)
    by_hash = {c.hash: c.data for c in chunks}
    # Reversed, interleaved, and one chunk twice: the order asked is the order sent.
    asked = [c.hash for c in reversed(chunks)] + [chunks[0].hash]
    with users.raw(users.alice_token) as c:
        r = fetch(c, asked)
    assert r.status_code == 200
    assert "transfer-encoding" not in r.headers
    assert int(r.headers["content-length"]) == len(r.content)
    assert len(r.content) == sum(frames.HEADER.size + len(by_hash[h]) for h in asked)
    assert parse_frames(r.content) == [(h, by_hash[h]) for h in asked]
    # The client's own path (its direct socket reader) gets the same.
    assert [(n, bytes(d)) for n, d in a.fetch_chunks(asked)] == [(h, by_hash[h]) for h in asked]


def test_a_chunk_that_cannot_be_read_mid_answer_cuts_the_body_short(users, live):
    """The length is promised before the chunks are read; when a later one cannot be read
    (its pack damaged on disk), the server closes the connection: the client sees fewer bytes
    than promised and fails, and every chunk it did get before that is the right one."""
    a = users.alice
    first = os.urandom(6 * 1024 * 1024)
    later = os.urandom(1024 * 1024 + 5)
    upload_bytes(a, "/first.bin", first)
    upload_bytes(a, "/later.bin", later)  # its own upload: its own pack
    good, bad = chunk_bytes(first), chunk_bytes(later)
    needle = bad[0].data[2000:2064]
    [pack] = [p for p in live.data_dir.rglob("*.pack") if needle in p.read_bytes()]
    assert not any(c.data[:64] in pack.read_bytes() for c in good)
    with open(pack, "r+b") as fh:
        fh.truncate(64)  # the chunk's bytes are gone; its rows still say it is stored
    asked = [c.hash for c in good] + [c.hash for c in bad]
    expected = {c.hash: c.data for c in good}

    with users.raw(users.alice_token) as c, c.stream("POST", "/api/v1/blocks/fetch", json={"hashes": asked}) as r:
        assert r.status_code == 200
        promised = int(r.headers["content-length"])
        got = bytearray()
        with pytest.raises(httpx.HTTPError):
            for piece in r.iter_raw():
                got += piece
    assert len(got) < promised
    whole_frames = []
    pos = 0
    while pos + frames.HEADER.size <= len(got):
        raw, length = frames.HEADER.unpack_from(got, pos)
        if pos + frames.HEADER.size + length > len(got):
            break
        whole_frames.append((raw.hex(), bytes(got[pos + frames.HEADER.size : pos + frames.HEADER.size + length])))
        pos += frames.HEADER.size + length
    assert whole_frames and all(expected[h] == d for h, d in whole_frames)

    received: list[tuple[str, bytes]] = []
    with pytest.raises(CubbyError):
        for name, data in a.fetch_chunks(asked):
            received.append((name, bytes(data)))
    assert all(expected[h] == d for h, d in received)


def test_a_chunk_whose_row_disagrees_with_its_bytes_is_never_sent_with_a_wrong_length(users, live):
    """Frames are sized by what the store returns, the body by the rows: should they ever
    differ, the answer stops before that frame instead of sending a body longer or shorter
    than promised; when that frame would be the first, nothing is sent but the error."""
    a = users.alice
    data, good = os.urandom(200_000), os.urandom(100_000)
    upload_bytes(a, "/sized.bin", data)
    upload_bytes(a, "/good.bin", good)
    h, g = hashlib.sha256(data).hexdigest(), hashlib.sha256(good).hexdigest()
    db = sqlite3.connect(live.data_dir / "meta.db")
    try:
        db.execute("UPDATE blocks SET size = size + 1 WHERE hash = ?", (h,))
        db.commit()
    finally:
        db.close()
    with users.raw(users.alice_token) as c, c.stream("POST", "/api/v1/blocks/fetch", json={"hashes": [g, h]}) as r:
        assert r.status_code == 200
        assert int(r.headers["content-length"]) == 2 * frames.HEADER.size + len(good) + len(data) + 1
        with pytest.raises(httpx.HTTPError):
            r.read()
    with users.raw(users.alice_token) as c:
        alone = c.post("/api/v1/blocks/fetch", json={"hashes": [h]})
    assert alone.status_code == 500 and alone.json()["code"] == "corrupt_chunk"
    with pytest.raises(CubbyError):
        list(a.fetch_chunks([h]))


def test_a_list_with_one_chunk_the_token_cannot_read_is_refused_whole(users):
    a, b = users.alice, users.bob
    mine, theirs = os.urandom(50_000), os.urandom(50_000)
    upload_bytes(b, "/mine.bin", mine)
    upload_bytes(a, "/theirs.bin", theirs)
    h_mine, h_theirs = hashlib.sha256(mine).hexdigest(), hashlib.sha256(theirs).hexdigest()
    never = hashlib.sha256(b"never stored anywhere").hexdigest()
    with users.raw(users.bob_token) as c:
        ok = fetch(c, [h_mine])
        assert ok.status_code == 200 and parse_frames(ok.content) == [(h_mine, mine)]
        for asked in ([h_mine, h_theirs], [h_theirs, h_mine], [h_mine, never]):
            r = fetch(c, asked)
            assert r.status_code == 404 and r.json()["code"] == "not_found"
            assert mine not in r.content and theirs not in r.content


def test_range_downloads_of_compressed_and_raw_files_are_unchanged(users):
    a = users.alice
    text = text_bytes(3 * 1024 * 1024 + 11, seed=2)
    upload_bytes(a, "/range.txt", text)
    with users.raw(users.alice_token) as c:
        whole = c.get("/api/v1/content/range.txt")
        assert whole.status_code == 200 and whole.content == text
        mid = 1024 * 1024 - 17
        r = c.get("/api/v1/content/range.txt", headers={"Range": f"bytes={mid}-{mid + 1_500_000}"})
        assert r.status_code == 206 and r.content == text[mid : mid + 1_500_001]
        assert r.headers["content-range"] == f"bytes {mid}-{mid + 1_500_000}/{len(text)}"
        bad = c.get("/api/v1/content/range.txt", headers={"Range": f"bytes={len(text)}-"})
        assert bad.status_code == 416


def test_locate_on_a_folder_store_hands_out_no_reads_and_checks_its_input_and_access(users):
    """``/blocks/locate`` on the default store (a local folder: no bucket to read from) says
    ``direct: false``, after the same checks as a fetch: a malformed list is a 400, a chunk
    the token may not read a 404 that names no location, no token a 401."""
    a, b = users.alice, users.bob
    mine, theirs = os.urandom(40_000), os.urandom(40_000)
    upload_bytes(b, "/mine.bin", mine)
    upload_bytes(a, "/theirs.bin", theirs)
    h_mine, h_theirs = hashlib.sha256(mine).hexdigest(), hashlib.sha256(theirs).hexdigest()
    with users.raw(users.bob_token) as c:
        ok = c.post("/api/v1/blocks/locate", json={"hashes": [h_mine, h_mine]})
        assert ok.status_code == 200 and ok.json() == {"direct": False, "fetches": FETCHES_FROM_DISK}
        for body in ({}, {"hashes": []}, {"hashes": "x"}, {"hashes": [h_mine.upper()]}, {"hashes": [h_mine] * 4097}):
            r = c.post("/api/v1/blocks/locate", json=body)
            assert r.status_code == 400 and r.json()["code"] in ("bad_request", "invalid_field"), body
        r = c.post("/api/v1/blocks/locate", json={"hashes": [h_mine, h_theirs]})
        assert r.status_code == 404 and "pack" not in r.text
    assert httpx.post(f"{users.server.url}/api/v1/blocks/locate", json={"hashes": [h_mine]}).status_code == 401
    with ApiClient(users.server.url, users.bob_token) as api:
        assert api.fetch_advice is None
        assert dict(api.fetch_chunks([h_mine])) == {h_mine: mine}
        assert api.bucket_reads is False  # asked once, then fetched: not asked again
        assert api.fetch_advice == FETCHES_FROM_DISK == 2  # one window written while the next is read

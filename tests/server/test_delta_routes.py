"""The delta routes over HTTP (`cubby.server.deltas`): malformed and hostile requests are
refused with ``bad_delta`` (or ``bad_request``) and store nothing; a base the caller cannot read
makes the chunk travel whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import zstandard

from cubby.core import delta, frames
from cubby.core.chunking import MAX_SIZE
from cubby.core.hashing import sha256_hex
from cubby.model import ChunkRef


def stored(api: Any, data: bytes, path: str) -> str:
    h = sha256_hex(data)
    api.upload_chunks(api.account()["root_ns"], [(h, data)])
    assert api.commit(path, len(data), [ChunkRef(h, len(data))]).entry is not None
    return h


@pytest.fixture
def c(users: Any) -> Iterator[httpx.Client]:
    with users.raw(users.alice_token) as client:
        yield client


def needs_upload(api: Any, h: str, size: int) -> bool:
    res = api.commit(f"/probe-{h[:8]}", size, [ChunkRef(h, size)])
    return res.entry is None and [n.hash for n in res.needed] == [h]


def test_malformed_patch_frames_are_refused_and_nothing_is_stored(users: Any, c: httpx.Client) -> None:
    old = os.urandom(200_000)
    base = stored(users.alice, old, "/old.bin")
    new = old[:5000] + b"!" + old[5000:]
    h = sha256_hex(new)
    good = delta.patch(delta.signature(old), new)
    ns = users.alice.account()["root_ns"]
    huge = zstandard.ZstdCompressor().compress(b"\0" * (2 * MAX_SIZE))  # declares 8 MiB of output
    bodies = [
        b"\x00" + good,  # no base
        bytes([delta.MAX_SPAN + 1]) + bytes.fromhex(base) * (delta.MAX_SPAN + 1) + good,
        b"\x02" + bytes.fromhex(base),  # two bases named, one given
        delta.pack_patch([base], b"not zstd"),
        delta.pack_patch([base], huge),
    ]
    for body in bodies:
        r = c.post(
            f"/api/v1/blocks/patch?ns_id={ns}",
            content=frames.encode(h, body),
            headers={"content-type": frames.CONTENT_TYPE},
        )
        assert r.status_code == 400 and r.json()["code"] == "bad_delta", (body[:3], r.text)
    assert needs_upload(users.alice, h, len(new))
    r = c.post(
        f"/api/v1/blocks/patch?ns_id={ns}",
        content=frames.encode(h, delta.pack_patch([base], good)),
        headers={"content-type": frames.CONTENT_TYPE},
    )
    assert r.status_code == 200 and r.json()["stored"] == 1


def test_fetch_delta_field_validation(users: Any, c: httpx.Client) -> None:
    h = stored(users.alice, os.urandom(100_000), "/a.bin")
    for pairs in (
        [[h, []]],
        [[h, [h] * (delta.MAX_SPAN + 1)]],
        [[h, 7]],
        [[h, ["zz"]]],
        [[h, [h] * delta.MAX_SPAN]] * (delta.MAX_BASES // delta.MAX_SPAN + 1),
    ):
        r = c.post("/api/v1/blocks/fetch_delta", json={"pairs": pairs})
        assert r.status_code == 400, (pairs[0], r.text)


def test_a_base_the_caller_cannot_read_makes_the_chunk_travel_whole(users: Any) -> None:
    secret = stored(users.bob, os.urandom(300_000), "/secret.bin")
    mine = os.urandom(300_000)
    h = stored(users.alice, mine, "/mine.bin")
    old = os.urandom(300_000)
    base = stored(users.alice, old, "/old.bin")
    got = dict(users.alice.fetch_against([(h, (secret,)), (h, (base, secret))], {secret: b"", base: old}))
    assert got == {h: mine}
    # a single base may still be named as a string (the form before bases spanned chunks)
    with users.raw(users.alice_token) as c:
        r = c.post("/api/v1/blocks/fetch_delta", json={"pairs": [[h, base]]})
        assert r.status_code == 200
        (name, data), *_ = list(frames.FrameReader(delta.FETCH_FRAME).feed(r.content))
        assert name == h and data[:1] in (delta.WHOLE, delta.DELTA)

"""An edit inside a large file travels as a delta of the changed chunk, both ways."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cubby.client.api import ApiClient
from cubby.client.sync.engine import SyncEngine
from cubby.core import delta
from cubby.core.hashing import sha256_hex
from cubby.errors import BadRequest, ChunkMismatch, NotFound
from cubby.model import ChunkRef
from tests.sync.conftest import Clients

SIZE = 6 * 1024 * 1024


class CountingApi(ApiClient):
    """Chunk payload bytes both ways: whole chunks, patches and signatures, and deltas."""

    up = 0
    down = 0
    whole_down = 0
    frames: list[tuple[bytes, int]]
    """Each fetch_delta frame's kind (`delta.DELTA` or `delta.WHOLE`) and size."""

    def upload_chunks(self, ns_id: int, items: Sequence[tuple[str, bytes]]) -> int:
        self.up += sum(len(d) for _, d in items)
        return super().upload_chunks(ns_id, items)

    def upload_patches(self, ns_id: int, items: Sequence[tuple[str, Sequence[str], bytes]]) -> int:
        self.up += sum(len(p) for _, _, p in items)
        return super().upload_patches(ns_id, items)

    def signatures(self, hashes: Sequence[str]) -> dict[str, bytes]:
        out = super().signatures(hashes)
        self.down += sum(len(s) for s in out.values())
        return out

    def fetch_chunks(self, hashes: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        for name, data in super().fetch_chunks(hashes):
            self.down += len(data)
            self.whole_down += 1
            yield name, data

    def _stream_frames(self, url: str, body: dict[str, Any], max_frame: int) -> Iterator[tuple[str, bytes]]:
        for name, data in super()._stream_frames(url, body, max_frame):
            self.down += len(data)
            self.frames.append((data[:1], len(data)))
            yield name, data


def engine(c: Clients, label: str) -> tuple[SyncEngine, CountingApi]:
    e = c.new(label)
    api = CountingApi(c.server.url, c.token)
    api.frames = []
    e.api.close()
    e.api = api
    return e, api


SEEDS = [1, 2, 3, 17, 20261201]
"""Which chunks an edit lands in, and so the bytes it costs, depend on the data. With seeds 1, 3
and 20261201 the edited chunk is larger than 1 MiB (zstd searched only a base's last MiB); with
17 the 4 KiB insert holds a cut point, and the chunks after it straddle two old chunks each
(their base is the two, concatenated)."""


@pytest.mark.parametrize("seed", SEEDS)
def test_small_edits_travel_as_deltas_both_ways(clients: Clients, seed: int) -> None:
    a, up = engine(clients, "alpha")
    b, down = engine(clients, "beta")
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(SIZE))
    (a.root / "big.bin").write_bytes(data)
    clients.settle()
    assert (b.root / "big.bin").read_bytes() == data

    for edit in ("overwrite", "insert", "insert 4 KiB"):
        mid = len(data) // 2
        if edit == "overwrite":
            data[mid] ^= 1
        elif edit == "insert":
            data[mid:mid] = b"!"
        else:
            data[mid:mid] = rng.randbytes(4096)
        (a.root / "big.bin").write_bytes(data)
        up.up = up.down = down.up = down.down = down.whole_down = 0
        down.frames = []
        assert a.run_once().converged
        assert up.up < 24 * 1024, (edit, up.up)  # a chunk is about 1 MiB
        assert b.run_once().converged
        assert (b.root / "big.bin").read_bytes() == data
        # every changed chunk came as a delta against the old version, none of them whole
        assert down.frames and down.whole_down == 0, (edit, down.frames)
        assert all(kind == delta.DELTA and n < 8 * 1024 for kind, n in down.frames), (edit, down.frames)
        assert down.down < 24 * 1024, (edit, down.down)
        assert b"".join(clients.api.download("/big.bin")) == data


def test_a_client_without_the_old_version_downloads_whole_chunks(clients: Clients, tmp_path: Path) -> None:
    a, _ = engine(clients, "alpha")
    data = bytearray(os.urandom(SIZE))
    (a.root / "big.bin").write_bytes(data)
    assert a.run_once().converged
    data[100] ^= 1
    (a.root / "big.bin").write_bytes(data)
    assert a.run_once().converged
    fresh, api = engine(clients, "fresh")
    assert fresh.run_once().converged
    assert (fresh.root / "big.bin").read_bytes() == data and api.whole_down > 0


def chunk_on_server(c: Clients, data: bytes, path: str) -> str:
    h = sha256_hex(data)
    ns = c.api.account()["root_ns"]
    c.api.upload_chunks(ns, [(h, data)])
    assert c.api.commit(path, len(data), [ChunkRef(h, len(data))]).entry is not None
    return h


def test_a_patch_that_does_not_make_its_chunk_is_refused_and_nothing_is_stored(clients: Clients) -> None:
    old = os.urandom(300_000)
    base = chunk_on_server(clients, old, "/old.bin")
    new = old[:1000] + b"x" + old[1001:]
    sig = clients.api.signatures([base])[base]
    good = delta.patch(sig, new)
    ns = clients.api.account()["root_ns"]
    other = os.urandom(300_000)
    lie = sha256_hex(other)  # claims the patch makes bytes it does not make
    with pytest.raises(ChunkMismatch):
        clients.api.upload_patches(ns, [(sha256_hex(new), (base,), good), (lie, (base,), good)])
    # neither the true result nor the lie was stored: a commit of either still needs its bytes
    for h in (sha256_hex(new), lie):
        res = clients.api.commit(f"/{h[:8]}", 300_000, [ChunkRef(h, 300_000)])
        assert res.entry is None and [n.hash for n in res.needed] == [h]
    with pytest.raises(BadRequest) as bad:
        clients.api.upload_patches(ns, [(sha256_hex(new), (base,), b"not zstd")])
    assert bad.value.code == "bad_delta"
    assert clients.api.upload_patches(ns, [(sha256_hex(new), (base,), good)]) == 1


def test_no_signature_or_delta_of_a_chunk_the_caller_cannot_read(clients: Clients, server: Any) -> None:
    secret = os.urandom(300_000)
    h = chunk_on_server(clients, secret, "/secret.bin")
    other = server.add_user("mallory" + h[:6])
    with ApiClient(server.url, other) as api:
        assert api.signatures([h]) == {}
        ns = api.account()["root_ns"]
        mine = os.urandom(1000)
        with pytest.raises(NotFound):
            api.upload_patches(ns, [(sha256_hex(mine), (h,), delta.patch(b"", mine))])
        with pytest.raises(NotFound):
            list(api.fetch_against([(h, (h,))], {h: b""}))


class LyingApi(ApiClient):
    """What a hostile or broken server could send: every delta frame with a byte changed."""

    wholes = 0

    def _stream_frames(self, url: str, body: dict[str, Any], max_frame: int) -> Iterator[tuple[str, bytes]]:
        for name, data in super()._stream_frames(url, body, max_frame):
            if data[:1] == delta.DELTA:
                data = data[:-1] + bytes([data[-1] ^ 1])
            yield name, data

    def fetch_chunks(self, hashes: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        for name, data in super().fetch_chunks(hashes):
            self.wholes += 1
            yield name, data


def test_a_download_delta_that_does_not_make_its_chunk_is_refused_and_the_chunk_fetched_whole(
    clients: Clients,
) -> None:
    rng = random.Random(4)
    old = rng.randbytes(300_000)
    new = old[:1000] + b"x" + old[1001:]
    base = chunk_on_server(clients, old, "/old.bin")
    h = chunk_on_server(clients, new, "/new.bin")
    lying = LyingApi(clients.server.url, clients.token)
    honest = CountingApi(clients.server.url, clients.token)
    honest.frames = []
    try:
        assert list(lying.fetch_against([(h, (base,))], {base: old})) == [(h, new)]
        assert lying.wholes == 1
        assert list(honest.fetch_against([(h, (base,))], {base: old})) == [(h, new)]
        assert honest.whole_down == 0 and honest.frames[0][0] == delta.DELTA and honest.frames[0][1] < 1000
    finally:
        lying.close()
        honest.close()


def test_a_chunk_straddling_two_old_chunks_travels_against_both(clients: Clients) -> None:
    rng = random.Random(5)
    first, second = rng.randbytes(400_000), rng.randbytes(400_000)
    a, b = chunk_on_server(clients, first, "/a.bin"), chunk_on_server(clients, second, "/b.bin")
    new = first[200_000:] + b"edit" + second[:200_000]
    h = sha256_hex(new)
    ns = clients.api.account()["root_ns"]
    sigs = clients.api.signatures([a, b])
    blob = delta.patch(sigs[a] + sigs[b], new)
    assert len(blob) < 8 * 1024
    assert clients.api.upload_patches(ns, [(h, (a, b), blob)]) == 1
    got = list(clients.api.fetch_against([(h, (a, b))], {a: first, b: second}))
    assert got == [(h, new)]

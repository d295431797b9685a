"""Deltas of one chunk against another (`cubby.core.delta`): sizes and refusals."""

from __future__ import annotations

import random

import pytest
import zstandard

from cubby.core import delta
from cubby.core.chunking import MAX_SIZE
from cubby.errors import BadRequest


@pytest.mark.parametrize("size", [300_000, 1 << 20, 3 << 20, MAX_SIZE])
def test_a_download_delta_uses_the_whole_base(size: int) -> None:
    # zstd indexes only the last 2 ** (hash_log + 3) bytes of a dictionary: with level 3's own
    # tables a 3 MiB chunk's first 2 MiB were not searched and its delta was 2 MB
    rng = random.Random(size)
    old = rng.randbytes(size)
    mid = size // 2
    edits = {
        "overwrite": old[:mid] + bytes([old[mid] ^ 1]) + old[mid + 1 :],
        "insert": old[:mid] + b"!" + old[mid:],
        "4 KiB insert": old[:mid] + rng.randbytes(4096) + old[mid:],
        "halves swapped": old[mid:] + old[:mid],
    }
    for name, new in edits.items():
        blob = delta.encode_against(old, new[:MAX_SIZE])
        assert delta.decode_against(old, blob) == new[:MAX_SIZE]
        assert len(blob) < 1024 + (4096 if "4 KiB" in name else 0), (name, len(blob))


def test_a_delta_asking_for_a_larger_window_than_a_chunk_needs_is_refused() -> None:
    # a hostile server could otherwise make the client allocate a window of its choosing
    params = zstandard.ZstdCompressionParameters(window_log=delta.WINDOW_LOG + 2, write_content_size=False)
    cobj = zstandard.ZstdCompressor(compression_params=params).compressobj()
    blob = cobj.compress(b"x" * 1000) + cobj.flush()
    with pytest.raises(BadRequest) as refused:
        delta.decode_against(b"", blob)
    assert refused.value.code == "bad_delta"


def test_a_delta_or_patch_is_not_allowed_to_make_more_than_a_chunk() -> None:
    # python-zstandard allocates what a frame's header declares: the declared size is checked
    blob = zstandard.ZstdCompressor().compress(b"\0" * (2 * MAX_SIZE))
    for unpack in (delta.decode_against, delta.apply_patch):
        with pytest.raises(BadRequest) as refused:
            unpack(b"", blob)
        assert refused.value.code == "bad_delta"


def test_a_patch_sends_little_more_than_the_edit() -> None:
    rng = random.Random(7)
    old = rng.randbytes(1 << 20)
    new = old[:500_000] + rng.randbytes(4096) + old[500_000:]
    sig = delta.signature(old)
    blob = delta.patch(sig, new)
    assert delta.apply_patch(old, blob) == new
    assert len(sig) < 8 * 1024 and len(blob) < 4096 + 3 * delta.BLOCK_MAX


def test_a_chunk_straddling_old_chunks_gets_them_all_as_its_base() -> None:
    M = 1 << 20
    old = delta.offsets([("a", M), ("b", M), ("c", M), ("d", M)])
    # the edit moved a cut point: x straddles a and b, y straddles b and c, d is unchanged
    new = delta.offsets([("x", M + 300_000), ("y", M), ("d2", 2 * M - 300_000)])
    assert delta.pick_bases(new, old) == {"x": ("a", "b"), "y": ("b", "c"), "d2": ("c", "d")}
    # an unchanged chunk has no base; a chunk never is its own base
    assert delta.pick_bases(delta.offsets([("a", M), ("b2", M)]), old[:2]) == {"b2": ("b",)}
    # a one-byte insert: the changed chunk overlaps the next old one by a byte, not worth its
    # signature; a new chunk that overlaps only a sliver of one old chunk still gets it
    assert delta.pick_bases([("b3", M, M + 1)], old) == {"b3": ("b",)}
    assert delta.pick_bases([("e", 4 * M - 10, 100)], old) == {"e": ("d",)}


def test_a_base_is_bounded_in_chunks_and_bytes() -> None:
    small = delta.offsets([(f"o{i}", 256 * 1024) for i in range(16)])
    got = delta.pick_bases([("n", 0, MAX_SIZE)], small)["n"]
    assert len(got) == delta.MAX_SPAN and list(got) == sorted(got, key=lambda n: int(n[1:]))
    big = delta.offsets([("p", MAX_SIZE), ("q", MAX_SIZE), ("r", MAX_SIZE)])
    got = delta.pick_bases([("n", MAX_SIZE - 512 * 1024, MAX_SIZE + 1024 * 1024)], big)["n"]
    assert len(got) == 2 and "q" in got  # the one it overlaps most, and one neighbour


def test_a_delta_against_two_concatenated_chunks_is_small() -> None:
    rng = random.Random(3)
    a, b = rng.randbytes(MAX_SIZE), rng.randbytes(MAX_SIZE)  # the largest base there may be
    new = a[-2 * 1024 * 1024 :] + b"edit" + b[: 2 * 1024 * 1024 - 4]
    blob = delta.encode_against(a + b, new)
    assert delta.decode_against(a + b, blob) == new and len(blob) < 1024
    patch = delta.patch(delta.signature(a) + delta.signature(b), new)
    assert delta.apply_patch(a + b, patch) == new and len(patch) < 4 * delta.BLOCK_MAX


def test_a_patch_frame_names_its_bases() -> None:
    names = ("ab" * 32, "cd" * 32)
    assert delta.unpack_patch(delta.pack_patch(names, b"patch")) == (names, b"patch")
    for bad in (b"", b"\x00patch", b"\x02" + b"x" * 40, bytes([delta.MAX_SPAN + 1]) + b"x" * 500):
        with pytest.raises(BadRequest):
            delta.unpack_patch(bad)

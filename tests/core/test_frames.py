"""Chunk frames: whatever way the network splits a body, the reader gives back exactly the
chunks that were framed, in order, as independent bytes; a cut-off body is refused."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cubby.core import frames
from cubby.errors import BadRequest, PayloadTooLarge


def _items(blobs: list[bytes]) -> list[tuple[str, bytes]]:
    return [(hashlib.sha256(b).hexdigest(), b) for b in blobs]


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(points)]


@given(
    blobs=st.lists(st.binary(min_size=0, max_size=3000), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=30000), max_size=20),
)
def test_any_split_of_a_body_gives_back_the_framed_chunks(blobs: list[bytes], cuts: list[int]) -> None:
    items = _items(blobs)
    body = b"".join(frames.encode_many(items))
    reader = frames.FrameReader()
    got: list[tuple[str, bytes]] = []
    for piece in _split(body, cuts):
        got.extend(reader.feed(piece))
    reader.close()
    assert got == items
    assert all(type(data) is bytes for _, data in got)


def test_chunks_stay_whole_after_the_reader_moves_on() -> None:
    """A chunk handed out must not share memory with the reader's buffer, which is reused."""
    items = _items([b"a" * 5000, b"b" * 7000, b"c" * 3000])
    body = b"".join(frames.encode_many(items))
    reader = frames.FrameReader()
    first = reader.feed(body[:5100])
    rest = reader.feed(body[5100:])
    reader.close()
    assert first + rest == items
    assert first[0][1] == b"a" * 5000


@pytest.mark.parametrize("before", [0, 1, 3])
@pytest.mark.parametrize("whole", [True, False])
def test_the_reader_refuses_a_frame_longer_than_the_limit_before_buffering_it(before: int, whole: bool) -> None:
    """However the header arrives (behind whole frames in one piece, or on its own after a
    piece that ended mid-frame), a declared length over the limit is refused at once."""
    items = _items([bytes([i]) * 100 for i in range(before)])
    body = b"".join(frames.encode_many(items)) + frames.header("ab" * 32, 1001) + b"z" * 10
    reader = frames.FrameReader(max_frame=1000)
    pieces = [body] if whole else [body[:-20], body[-20:]]
    with pytest.raises(PayloadTooLarge):
        for piece in pieces:
            reader.feed(piece)


def test_a_body_cut_off_mid_frame_is_refused() -> None:
    body = b"".join(frames.encode_many(_items([b"x" * 1000])))
    reader = frames.FrameReader()
    assert reader.feed(body[:-1]) == []
    with pytest.raises(BadRequest) as exc:
        reader.close()
    assert exc.value.code == "truncated_body"


def test_a_reused_receive_buffer_does_not_change_chunks_in_progress() -> None:
    """The reader keeps pieces until their frame completes: a caller that feeds one bytearray
    again and again (a reused receive buffer) must not see its old contents overwritten."""
    items = _items([bytes([i]) * 3000 for i in range(1, 5)])
    body = b"".join(frames.encode_many(items))
    reader = frames.FrameReader()
    buf = bytearray(1000)
    got: list[tuple[str, bytes]] = []
    for i in range(0, len(body), 1000):
        piece = body[i : i + 1000]
        buf[: len(piece)] = piece
        got.extend(reader.feed(memoryview(buf)[: len(piece)]))
        buf[:] = b"\xff" * len(buf)  # the caller scribbles over its buffer before the next read
    reader.close()
    assert got == items


def test_small_frames_travel_joined_and_a_large_chunk_uncopied() -> None:
    """Each piece of a body is an event and a socket write for the HTTP library, so the frames
    of small chunks are joined into a few pieces; a large chunk goes out as its own bytes."""
    small = _items([bytes([i]) * 4096 for i in range(200)])
    big = _items([b"z" * 100_000])[0]
    items = [*small, big, *small[:3]]
    pieces = list(frames.encode_many(items))
    assert b"".join(pieces) == b"".join(frames.encode(n, d) for n, d in items)
    assert len(pieces) <= 8  # 203 small frames and one large one, not 408 pieces
    assert any(p is big[1] for p in pieces)


# -- read_frames: frames parsed straight from a readinto callable --------------------------------


def _reader(body: bytes, step: int | None = None) -> frames.ReadInto:
    """A readinto over ``body`` that hands out at most ``step`` bytes per call (as a socket may)."""
    pos = 0

    def readinto(view: memoryview) -> int:
        nonlocal pos
        n = min(len(view), len(body) - pos, step or len(view))
        view[:n] = body[pos : pos + n]
        pos += n
        return n

    return readinto


@given(
    blobs=st.lists(st.binary(min_size=0, max_size=3000), max_size=8),
    step=st.integers(min_value=1, max_value=5000),
)
def test_read_frames_gives_back_the_framed_chunks_whatever_the_read_sizes(blobs: list[bytes], step: int) -> None:
    items = _items(blobs)
    body = b"".join(frames.encode_many(items))
    got = list(frames.read_frames(_reader(body, step)))
    assert [(name, bytes(data)) for name, data in got] == items
    assert len({id(data) for _, data in got}) == len(got)  # each chunk its own buffer


def test_read_frames_of_an_empty_body_is_nothing() -> None:
    assert list(frames.read_frames(_reader(b""))) == []


@pytest.mark.parametrize("cut", [1, frames.HEADER.size - 1, frames.HEADER.size, frames.HEADER.size + 999])
def test_read_frames_refuses_a_body_cut_inside_a_frame(cut: int) -> None:
    body = b"".join(frames.encode_many(_items([b"x" * 1000, b"y" * 1000])))
    first = frames.HEADER.size + 1000
    with pytest.raises(BadRequest) as exc:
        list(frames.read_frames(_reader(body[: first + cut], 7)))
    assert exc.value.code == "truncated_body"


def test_read_frames_refuses_a_frame_longer_than_the_limit_before_reading_it() -> None:
    body = frames.header("00" * 32, 1 << 31)  # 2 GiB declared, nothing sent
    calls: list[int] = []
    base = _reader(body)

    def readinto(view: memoryview) -> int:
        calls.append(len(view))
        return base(view)

    with pytest.raises(PayloadTooLarge):
        list(frames.read_frames(readinto, max_frame=4096))
    assert all(n <= frames.HEADER.size for n in calls)  # nothing was allocated for the frame
    ok = frames.encode("00" * 32, b"z" * 4096)
    assert [bytes(d) for _, d in frames.read_frames(_reader(ok), max_frame=4096)] == [b"z" * 4096]

"""The client's side of downloads straight from the bucket: a plan from the server is followed
only when every part of it is well formed and about the chunks asked for, and what the
bucket sends is decoded within each chunk's stated size and verified, whatever it claims."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import pytest
import zstandard

from cubby.client.bucketreads import MAX_READ, BadPlan, BucketRead, PieceReader, parse_plan, read_chunks
from cubby.core.chunking import MAX_SIZE
from cubby.core.frames import ReadInto


def name_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


A, B, C = os.urandom(3000), os.urandom(5000), b"text " * 2000
NA, NB, NC = name_of(A), name_of(B), name_of(C)
ZC = zstandard.ZstdCompressor().compress(C)


def read_of(*chunks: tuple[str, int, int], first: int = 8, url: str = "http://bucket.example/p.pack?X-Amz-Signature=1") -> dict[str, Any]:
    length = sum(stored for _, stored, _ in chunks)
    return {"url": url, "headers": {"Range": f"bytes={first}-{first + length - 1}"}, "chunks": [list(c) for c in chunks]}


def plan_of(*reads: dict[str, Any], fetch: list[str] | None = None) -> dict[str, Any]:
    return {"direct": True, "reads": list(reads), "fetch": fetch or []}


def test_a_well_formed_plan_is_followed_and_what_it_leaves_out_is_fetched() -> None:
    plan = parse_plan(plan_of(read_of((NA, len(A) + 1, len(A)), (NC, len(ZC) + 1, len(C))), fetch=[NB]), [NA, NB, NC, NA])
    assert plan is not None
    assert [r.chunks for r in plan.reads] == [[(NA, len(A) + 1, len(A)), (NC, len(ZC) + 1, len(C))]]
    assert plan.fetch == [NB]
    left_out = parse_plan(plan_of(read_of((NA, len(A) + 1, len(A)))), [NA, NB, NC])
    assert left_out is not None and left_out.fetch == [NB, NC]  # not in the plan: fetched through the server
    assert parse_plan({"direct": False}, [NA]) is None


@pytest.mark.parametrize(
    "answer",
    [
        [],
        {"reads": []},
        {"direct": "yes"},
        plan_of(read_of((name_of(b"never asked"), 11, 10))),  # a chunk not asked for
        plan_of(read_of((NA, len(A) + 1, len(A))), read_of((NA, len(A) + 1, len(A)))),  # one chunk twice
        plan_of(read_of((NA, len(A) + 1, len(A))), fetch=[NA]),
        plan_of(read_of((NA, len(A) + 1, len(A)), url="file:///etc/passwd")),
        plan_of(read_of((NA, len(A) + 1, len(A)), url="http://user:pw@bucket.example/p")),
        plan_of(read_of((NA, len(A) + 1, len(A)), url="ftp://bucket.example/p")),
        plan_of({**read_of((NA, len(A) + 1, len(A))), "headers": {"Range": "bytes=8-3008", "Authorization": "x"}}),
        plan_of({**read_of((NA, len(A) + 1, len(A))), "headers": {"Range": "bytes=8-9000"}}),  # range wider than its chunk
        plan_of({**read_of((NA, len(A) + 1, len(A))), "headers": {"Range": "bytes=8-"}}),
        plan_of({**read_of((NA, len(A) + 1, len(A))), "headers": {}}),
        plan_of(read_of((NA, len(A) + 9, len(A)))),  # stored far larger than the chunk
        plan_of(read_of((NA, 0, len(A)))),
        plan_of(read_of((NA, MAX_SIZE + 2, MAX_SIZE + 1))),
        plan_of(read_of((NA, True, len(A)))),
        plan_of({**read_of((NA, len(A) + 1, len(A))), "chunks": []}),
        plan_of({**read_of((NA, len(A) + 1, len(A))), "url": None}),
    ],
)
def test_a_plan_that_is_not_well_formed_is_refused_whole(answer: Any) -> None:
    with pytest.raises(BadPlan):
        parse_plan(answer, [NA, NB])


def test_a_read_may_not_announce_more_than_the_most_the_client_holds_for_one() -> None:
    many = [name_of(str(i).encode()) for i in range(MAX_READ // MAX_SIZE + 1)]
    chunks = [(n, MAX_SIZE + 1, MAX_SIZE) for n in many]
    with pytest.raises(BadPlan):
        parse_plan(plan_of(read_of(*chunks)), many)


def reader(data: bytes) -> tuple[ReadInto, Any]:
    buf = io.BytesIO(data)
    return buf.readinto, lambda: buf.tell() == len(data)


def read(entries: list[tuple[str, int, int]], body: bytes) -> list[tuple[str, bytes]]:
    readinto, done = reader(body)
    return [(n, bytes(d)) for n, d in read_chunks(BucketRead("http://b/p", "bytes=0-1", entries), readinto, done)]


def test_raw_and_compressed_chunks_are_decoded_and_verified() -> None:
    entries = [(NA, len(A) + 1, len(A)), (NC, len(ZC) + 1, len(C))]
    assert read(entries, b"\x00" + A + b"\x01" + ZC) == [(NA, A), (NC, C)]


@pytest.mark.parametrize(
    "body",
    [
        b"\x00" + B + b"\x01" + ZC,  # other bytes under A's name
        b"\x00" + A[:-1] + b"!" + b"\x01" + ZC,  # one byte damaged
        b"\x00" + A + b"\x01" + ZC[:-5],  # cut short
        b"\x00" + A + b"\x01" + ZC + b"more",  # more than announced
        b"\x07" + A + b"\x01" + ZC,  # unknown codec
        b"\x00" + A + b"\x01" + b"not zstd at all" + ZC[15:],
    ],
    ids=["other", "damaged", "short", "longer", "codec", "garbage"],
)
def test_what_the_bucket_sends_wrong_is_refused(body: bytes) -> None:
    with pytest.raises(BadPlan):
        read([(NA, len(A) + 1, len(A)), (NC, len(ZC) + 1, len(C))], body)


def test_a_compressed_chunk_cannot_inflate_past_its_stated_size() -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB in a few KiB
    small = name_of(b"\0" * 100)
    with pytest.raises(BadPlan, match="decompresses to 101 bytes, not 100"):
        read([(small, len(bomb) + 1, 100)], b"\x01" + bomb)


def test_piece_reader_hands_out_pieces_as_they_come_and_counts_them() -> None:
    counted: list[int] = []
    pieces = PieceReader(iter([b"abc", b"", b"defgh"]), counted.append)
    view = memoryview(bytearray(4))
    assert pieces.readinto(view) == 3 and bytes(view[:3]) == b"abc"
    assert pieces.readinto(view) == 4 and bytes(view) == b"defg"
    assert not pieces.ended()
    assert counted == [3, 0, 5]
    assert pieces.ended()

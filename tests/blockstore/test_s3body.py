"""The body of an S3 PUT made of parts (`PartsBody`) and its checks (`BodyCheck`), without a
server: that the bytes read are the parts' concatenation however they are laid out and read,
that large parts go out as views (not copies), and that the checks are the right digests. What
a server receives and refuses is in test_s3.py."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import zlib

from hypothesis import given
from hypothesis import strategies as st

from cubby.blockstore.s3body import GATHER, BodyCheck, PartsBody


def read_all(body: PartsBody, size: int) -> list[bytes | memoryview]:
    pieces = []
    while piece := body.read(size):
        pieces.append(piece)
    return pieces


@given(
    st.lists(st.binary(max_size=300), max_size=12),
    st.integers(min_value=1, max_value=700),
    st.integers(min_value=0, max_value=2000),
)
def test_reads_give_the_concatenation_whatever_the_parts_and_read_sizes(parts, size, start):
    whole = b"".join(parts)
    body = PartsBody(parts)
    assert len(body) == len(whole) and body.tell() == 0
    assert b"".join(read_all(body, size)) == whole and body.tell() == len(whole)
    start = min(start, len(whole))
    assert body.seek(start) == start and body.tell() == start
    assert b"".join(read_all(body, size)) == whole[start:]
    body.seek(0)
    assert body.read() == whole and body.read() == b""


def test_a_read_inside_a_large_part_is_a_view_of_it_not_a_copy():
    big = os.urandom(3 * GATHER)
    body = PartsBody([b"\x00", big, b"\x01"])
    first = body.read(GATHER)
    assert bytes(first) == b"\x00"  # a small part before a large one goes alone: not joined with it
    piece = body.read(GATHER)
    assert isinstance(piece, memoryview) and piece.obj is big and bytes(piece) == big[:GATHER]
    rest = read_all(body, 10 * GATHER)
    assert b"".join(rest) == big[GATHER:] + b"\x01"


def test_small_parts_are_gathered_into_reads_of_the_size_asked():
    """A pack of 4 KiB chunks is a 1-byte header and 4 KiB of payload per chunk: a read takes
    many of them, so that they are not each a send of their own."""
    parts = [p for _ in range(100) for p in (b"\x00", os.urandom(4096))]
    body = PartsBody(parts)
    sizes = [len(p) for p in read_all(body, 128 * 1024)]
    assert sum(sizes) == 100 * 4097 and len(sizes) == 4 and sizes[0] == 128 * 1024


def test_botocore_s_way_of_sizing_and_hashing_a_body_leaves_it_where_it_was():
    """botocore sizes a body with len() (or seek to the end and back) and, for a signed payload,
    reads it in 1 MiB pieces and seeks back before sending it."""
    parts = [os.urandom(700_000), b"x", os.urandom(1_500_000)]
    body = PartsBody(parts)
    assert body.seek(0, io.SEEK_END) == 2_200_001 and body.seek(0) == 0
    digest = hashlib.sha256()
    for piece in iter(lambda: body.read(1 << 20), b""):
        digest.update(piece)
    body.seek(0)
    assert digest.digest() == hashlib.sha256(b"".join(parts)).digest()
    assert b"".join(read_all(body, 128 * 1024)) == b"".join(parts)


def test_each_check_is_the_digest_of_the_concatenation():
    parts = [b"CUBBYPK1", os.urandom(5000), memoryview(b"\x00abc"), b""]
    whole = b"".join(bytes(p) for p in parts)
    crc = BodyCheck.CRC32.headers(parts)["ChecksumCRC32"]
    assert base64.b64decode(crc) == zlib.crc32(whole).to_bytes(4, "big")
    assert base64.b64decode(BodyCheck.MD5.headers(parts)["ContentMD5"]) == hashlib.md5(whole).digest()
    assert BodyCheck.SHA256.headers(parts) == {}  # botocore signs the payload itself

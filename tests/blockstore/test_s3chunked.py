"""The body signed in chunks (`cubby.blockstore.s3chunked`): its signatures against AWS's own
published example, and how a pack's parts are cut into chunks whose SHA-256 is known."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cubby.blockstore.objects import SIGNED_CHUNK_MIN
from cubby.blockstore.s3chunked import (
    CHUNK_TARGET,
    BodyChunk,
    ChunkSigner,
    StreamingAuth,
    encode,
    encoded_length_of,
    plan_chunks,
    signing_key,
)
from tests.helpers.fault_proxy import chunk_signatures_hold, decode_chunked

# AWS's example of a PUT signed in chunks ("Signature Calculations for the Authorization
# Header: Transferring Payload in Multiple Chunks", Amazon S3 API reference): 66,560 bytes of
# "a" in a chunk of 64 KiB, one of 1 KiB and the final empty one.
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AMZ_DATE = "20130524T000000Z"
SCOPE = "20130524/us-east-1/s3/aws4_request"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNK_SIGNATURES = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
]
EXAMPLE_BODY = b"a" * 66560


class _AtExampleTime(StreamingAuth):
    """cubby's request signer, at the example's time rather than now."""

    def add_auth(self, request: AWSRequest) -> None:
        request.context["timestamp"] = AMZ_DATE
        self._modify_request_before_signing(request)
        canonical = self.canonical_request(request)
        signature = self.signature(self.string_to_sign(request, canonical), request)
        self._inject_signature_to_request(request, signature)


def example_chunks() -> list[BodyChunk]:
    pieces = [EXAMPLE_BODY[:65536], EXAMPLE_BODY[65536:]]
    return [BodyChunk([p], len(p), hashlib.sha256(p).hexdigest()) for p in pieces]


def test_the_request_and_its_chunks_are_signed_as_aws_publishes() -> None:
    """The request's own signature (botocore's SigV4 with the streaming payload), each chunk's
    and the encoded length are exactly those of AWS's example."""
    request = AWSRequest(
        method="PUT",
        url="https://s3.amazonaws.com/examplebucket/chunkObject.txt",
        headers={
            "x-amz-storage-class": "REDUCED_REDUNDANCY",
            "Content-Encoding": "aws-chunked",
            "x-amz-decoded-content-length": "66560",
            "Content-Length": str(encoded_length_of([c.size for c in example_chunks()])),
        },
    )
    _AtExampleTime(Credentials(ACCESS_KEY, SECRET_KEY), "s3", "us-east-1").add_auth(request)
    assert request.headers["Content-Length"] == "66824"
    assert request.headers["Authorization"].endswith(f"Signature={SEED}")
    signer = ChunkSigner(signing_key(SECRET_KEY, "20130524", "us-east-1"), AMZ_DATE, SCOPE, SEED)
    body = b"".join(encode(example_chunks(), signer))
    assert len(body) == 66824
    assert decode_chunked(body) == [
        (EXAMPLE_BODY[:65536], CHUNK_SIGNATURES[0]),
        (EXAMPLE_BODY[65536:], CHUNK_SIGNATURES[1]),
        (b"", CHUNK_SIGNATURES[2]),
    ]


def test_the_proxy_that_stands_in_for_a_checking_server_checks_as_aws_does() -> None:
    """The test proxy's own check (tests/helpers/fault_proxy.py) takes AWS's example request
    (its seed signature computed there from the request as it arrived) and refuses it with one
    byte of the body changed, a chunk signature swapped, a signed header or the path changed,
    or another secret."""
    target = "/examplebucket/chunkObject.txt"
    fields = {
        "Host": "s3.amazonaws.com",
        "x-amz-storage-class": "REDUCED_REDUNDANCY",
        "Content-Encoding": "aws-chunked",
        "Content-Length": "66824",
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "x-amz-date": AMZ_DATE,
        "x-amz-decoded-content-length": "66560",
        "Authorization": f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{SCOPE}, SignedHeaders=content-encoding;"
        f"content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class, "
        f"Signature={SEED}",
    }

    def lines(**changed: str) -> list[str]:
        return [f"{k}: {changed.get(k.lower().replace('-', '_'), v)}" for k, v in fields.items()]

    signer = ChunkSigner(signing_key(SECRET_KEY, "20130524", "us-east-1"), AMZ_DATE, SCOPE, SEED)
    body = b"".join(encode(example_chunks(), signer))
    assert chunk_signatures_hold("PUT", target, lines(), body, SECRET_KEY)
    garbled = body[:1000] + b"b" + body[1001:]
    assert not chunk_signatures_hold("PUT", target, lines(), garbled, SECRET_KEY)
    swapped = body.replace(CHUNK_SIGNATURES[1].encode(), CHUNK_SIGNATURES[0].encode())
    assert not chunk_signatures_hold("PUT", target, lines(), swapped, SECRET_KEY)
    assert not chunk_signatures_hold("PUT", target, lines(x_amz_decoded_content_length="66561"), body, SECRET_KEY)
    assert not chunk_signatures_hold("PUT", target, lines(x_amz_storage_class="STANDARD"), body, SECRET_KEY)
    assert not chunk_signatures_hold("PUT", target, lines(host="elsewhere.example"), body, SECRET_KEY)
    assert not chunk_signatures_hold("PUT", "/examplebucket/another.txt", lines(), body, SECRET_KEY)
    assert not chunk_signatures_hold("POST", target, lines(), body, SECRET_KEY)
    assert not chunk_signatures_hold("PUT", target, lines(), body, "another secret")


def pack_like(sizes: list[int]) -> tuple[list[bytes], dict[int, Any]]:
    """Parts laid out as a pack's are (magic, then a codec byte and a payload per chunk, then
    a trailer), with the verifying hasher of each payload of at least 4 KiB by its position."""
    parts: list[bytes] = [b"CUBBYPK1"]
    known = {}
    for size in sizes:
        data = os.urandom(size)
        parts += [b"\x00", data]
        if size >= 4096:
            known[len(parts) - 1] = hashlib.sha256(data)
    parts.append(os.urandom(48 * len(sizes) + 12))
    return parts, known


@pytest.mark.parametrize(
    "sizes",
    [
        [300_000] * 20,
        [4096] * 600,
        [1 << 20, 5000, 100, 3 << 20, 9000, 9000, 1 << 20],
        [10],
        [],
    ],
    ids=["large", "small", "mixed", "tiny", "empty"],
)
def test_chunks_keep_the_body_and_hash_to_their_bytes(sizes: list[int]) -> None:
    """Whatever the parts, the chunks hold the body's bytes in order, each chunk's SHA-256 is
    that of its bytes, and every chunk but the last holds at least 8 KiB (AWS's rule)."""
    parts, known = pack_like(sizes)
    chunks = plan_chunks(parts, known)
    assert b"".join(b"".join(c.pieces) for c in chunks) == b"".join(parts)
    for chunk in chunks:
        data = b"".join(chunk.pieces)
        assert chunk.size == len(data) and chunk.sha256 == hashlib.sha256(data).hexdigest()
    assert all(c.size >= SIGNED_CHUNK_MIN for c in chunks[:-1])
    assert all(c.size <= CHUNK_TARGET + 4 * (1 << 20) for c in chunks)


def test_a_known_chunk_starts_a_chunk_of_the_body_and_is_not_hashed_again() -> None:
    """Each payload whose hasher is known (but the first, behind the 9 bytes of magic and codec
    byte, too few to stand alone) begins a chunk of the body, with the codec byte after it; its
    SHA-256 comes from that hasher, not from the bytes: a hasher that lies shows in the chunk."""
    parts, known = pack_like([300_000] * 6)
    lying = {i: hashlib.sha256(b"not these bytes") for i in known}
    chunks = plan_chunks(parts, lying)
    starts = [c.pieces[0] for c in chunks]
    assert starts[0] is parts[0] and [id(p) for p in starts[1:]] == [id(parts[i]) for i in sorted(known)[1:]]
    assert len(chunks) == len(known)
    for chunk in chunks[1:]:
        fed = hashlib.sha256(b"not these bytes")
        for piece in chunk.pieces[1:]:
            fed.update(piece)
        assert chunk.sha256 == fed.hexdigest() != hashlib.sha256(b"".join(chunk.pieces)).hexdigest()
    # copied, never fed: the hashers given are as they were
    assert {state.hexdigest() for state in lying.values()} == {hashlib.sha256(b"not these bytes").hexdigest()}


def test_a_long_run_of_small_parts_is_cut_near_the_target() -> None:
    """Small chunks (4 KiB files) are hashed afresh, in chunks of the body of about
    `CHUNK_TARGET` bytes, not one chunk of the whole pack."""
    parts, _ = pack_like([4096] * 1000)
    chunks = plan_chunks(parts, {})
    assert len(chunks) >= 3 and all(CHUNK_TARGET <= c.size < CHUNK_TARGET + 8192 for c in chunks[:-1])

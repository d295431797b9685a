"""A PUT body signed in chunks (SigV4 streaming, ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``), whose
chunks' SHA-256 the server has mostly computed already: the `BodyCheck.SHA256_CHUNKED` check.

Why. On an S3 server that ignores ``x-amz-checksum-crc32`` (Ceph RGW before 19 "Squid",
where cubby's own benchmark runs), the body's check used to be a signed payload: its SHA-256 in
``x-amz-content-sha256``, a second pass over every byte of every pack, after the pass that
verified each chunk against its name. Signed in chunks, each chunk of the body carries the
HMAC of its own SHA-256 (chained from the request's signature), which every SigV4 server checks
as it reads the chunk; and when a chunk of the body is exactly one of cubby's chunks (a raw
blob's payload, `cubby.blockstore.packfile.pack_parts`), its SHA-256 is the one that verified
it (`StreamingPut.put_parts`' ``sha256``), carried on over the few bytes after it. Measured
against Ceph RGW 16.2 on this project's 2-core machine (1 GiB in 64 PUTs of 16 MiB, four at
once, 2026-12-06): the sending side spent 0.51-0.55 CPU s with the chunks' SHA-256 known,
against 1.27-1.31 with a signed payload and 0.53 with none; RGW spent the same either way
(3.39 against 3.37-3.41), since it hashes every byte under both.

The encoding (AWS's "Transferring payload in multiple chunks"): headers
``Content-Encoding: aws-chunked``, ``x-amz-decoded-content-length`` (the object's size) and
``Content-Length`` (the encoded body's); then each chunk as ``hex(size);chunk-signature=SIG``,
CRLF, its bytes, CRLF; then an empty chunk, signed too, and CRLF. A chunk's signature is the
HMAC, under the request's signing key, of ``AWS4-HMAC-SHA256-PAYLOAD``, the request's time,
its scope, the previous signature (the request's own, for the first), the SHA-256 of nothing
and the chunk's SHA-256. Every chunk but the last must hold at least `SIGNED_CHUNK_MIN` bytes
(AWS refuses smaller ones), so small pieces (a pack's magic, small chunks, codec bytes) are
hashed afresh, with their neighbours: `plan_chunks`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from botocore.auth import S3SigV4Auth

from cubby.blockstore.objects import SIGNED_CHUNK_MIN
from cubby.core.hashing import Sha256State, update_holding

STREAMING_PAYLOAD = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
"""What ``x-amz-content-sha256`` says of a body signed in chunks."""
CHUNK_TARGET = 1024 * 1024
"""A chunk of the body hashed afresh ends at the first piece boundary past this many bytes,
so that a long run of small or compressed pieces is not one huge chunk (a server reads and
hashes a chunk before it knows whether its signature holds)."""
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_SIGNATURE_LINE = len(";chunk-signature=") + 64 + 2
"""Bytes of a chunk's header line after its size in hex."""


class StreamingAuth(S3SigV4Auth):
    """botocore's S3 SigV4, for a body signed in chunks: the payload's hash in the request's
    signature is `STREAMING_PAYLOAD` (botocore would hash the body, or say it is unsigned). Its
    signature is the first link of the chunks' chain (`ChunkSigner`'s ``seed``)."""

    def payload(self, request: Any) -> str:
        return STREAMING_PAYLOAD


@dataclass(frozen=True, slots=True)
class BodyChunk:
    """One chunk of the body: ``pieces`` concatenated, ``size`` bytes, whose SHA-256 is
    ``sha256`` (hex)."""

    pieces: list[bytes | memoryview]
    size: int
    sha256: str


def plan_chunks(parts: Sequence[bytes | memoryview], known: Mapping[int, Sha256State]) -> list[BodyChunk]:
    """The body ``parts`` make, cut into chunks at part boundaries, each with its SHA-256.

    A part whose hasher ``known`` holds (by its position in ``parts``) starts a chunk of its
    own when the chunk before it is long enough (`SIGNED_CHUNK_MIN`): the chunk's SHA-256 is a
    copy of that hasher fed the small parts after it, so the part's bytes are not read again.
    Any other part is hashed into the chunk it falls in. A chunk also ends past `CHUNK_TARGET`,
    but not before a small part that comes just before a known one (a pack's codec byte before
    a raw chunk): that would leave the known part in a chunk too short to start at it."""
    chunks: list[BodyChunk] = []
    pieces: list[bytes | memoryview] = []
    size = 0
    hasher: Sha256State | None = None
    for i, part in enumerate(parts):
        n = len(part)
        if n == 0:
            continue
        state = known.get(i)
        if hasher is not None and _ends_before(i, parts, known, size):
            chunks.append(BodyChunk(pieces, size, hasher.hexdigest()))
            pieces, size, hasher = [], 0, None
        if hasher is None and state is not None:
            hasher = state.copy()
        else:
            if hasher is None:
                hasher = hashlib.sha256()
            update_holding(hasher, part)
        pieces.append(part)
        size += n
    if hasher is not None:
        chunks.append(BodyChunk(pieces, size, hasher.hexdigest()))
    return chunks


def _ends_before(i: int, parts: Sequence[bytes | memoryview], known: Mapping[int, Sha256State], size: int) -> bool:
    """Whether a chunk of ``size`` bytes so far ends before part ``i`` (`plan_chunks`)."""
    if size < SIGNED_CHUNK_MIN:
        return False
    if i in known:
        return True
    if size < CHUNK_TARGET:
        return False
    return not (len(parts[i]) < SIGNED_CHUNK_MIN and i + 1 in known)


def encoded_length_of(sizes: Sequence[int]) -> int:
    """The length of the encoded body of chunks of ``sizes`` bytes (its ``Content-Length``),
    the final empty chunk included."""
    total = 1 + _SIGNATURE_LINE + 2
    for size in sizes:
        total += len(f"{size:x}") + _SIGNATURE_LINE + size + 2
    return total


def signing_key(secret_key: str, date: str, region: str, service: str = "s3") -> bytes:
    """SigV4's key for ``date`` (``YYYYMMDD``), ``region`` and ``service``."""
    key = hmac.new(f"AWS4{secret_key}".encode(), date.encode(), "sha256").digest()
    for step in (region, service, "aws4_request"):
        key = hmac.new(key, step.encode(), "sha256").digest()
    return key


class ChunkSigner:
    """The chain of chunk signatures of one request: each chunk's signature signs the one
    before it, starting from the request's own (``seed``)."""

    def __init__(self, key: bytes, amz_date: str, scope: str, seed: str) -> None:
        self._key = key
        self._head = f"AWS4-HMAC-SHA256-PAYLOAD\n{amz_date}\n{scope}\n"
        self._previous = seed

    def sign(self, sha256_hex: str) -> str:
        """The signature of the next chunk, whose SHA-256 is ``sha256_hex``."""
        text = f"{self._head}{self._previous}\n{EMPTY_SHA256}\n{sha256_hex}"
        self._previous = hmac.new(self._key, text.encode(), "sha256").hexdigest()
        return self._previous


def encode(chunks: Sequence[BodyChunk], signer: ChunkSigner) -> list[bytes | memoryview]:
    """The encoded body of ``chunks``, in pieces: each chunk's header line, its pieces as they
    are (not copied), CRLF; then the signed empty chunk."""
    out: list[bytes | memoryview] = []
    for chunk in chunks:
        out.append(f"{chunk.size:x};chunk-signature={signer.sign(chunk.sha256)}\r\n".encode())
        out.extend(chunk.pieces)
        out.append(b"\r\n")
    out.append(f"0;chunk-signature={signer.sign(EMPTY_SHA256)}\r\n\r\n".encode())
    return out

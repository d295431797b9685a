"""The body of one S3 PUT made of many parts (a pack's header, chunks and table of contents),
sent as the parts are, and the checksum that guards it on the way.

Why not one ``bytes``: a 16 MiB pack joined into one buffer is a copy of every byte, and
botocore copies a ``bytes`` body once more (it wraps it in a ``BytesIO`` and sends what its
``read`` returns). `PartsBody` is the file object botocore and urllib3 read instead: a read
inside one large part is a view of that part (no copy); only small parts (a 4 KiB chunk and
its one-byte header) are gathered into one piece, a copy of bytes that are in the CPU's cache.

Which check (`BodyCheck`), and why CRC32 where the server checks it: measured here against
Ceph RGW 16.2 (16 MiB PUTs, one thread, 2026-12-03), the cubby side of a PUT cost 0.70 CPU
s/GiB with no body checksum, 1.14 with CRC32, 1.62 with a signed payload (SHA-256, which RGW
then also computes: +0.9 s/GiB on its side) and 2.50 with Content-MD5 (MD5 runs at about 600
MB/s here, slower than SHA-256 with the CPU's SHA instructions). CRC32 in
``x-amz-checksum-crc32`` is what the AWS SDKs send by default today; AWS S3 refuses a body
that does not match it (``BadDigest``), as do servers that implement S3's additional
checksums. Servers that do not (Ceph RGW before 19 "Squid", moto) ignore the header, and a
body damaged on the way would be stored and acknowledged (caught only when read, since every
chunk is checked against its SHA-256 name). So by default the store finds out at its first
PUT whether the server checks CRC32 (`cubby.blockstore.s3.S3ObjectStore.body_check`) and
signs the payload where it does not (SHA-256, which every SigV4 server checks): in chunks
whose SHA-256 is mostly known already where the server checks those (`BodyCheck.SHA256_CHUNKED`,
`cubby.blockstore.s3chunked`: about what no check costs on cubby's side, against 0.9 s/GiB more
for a whole signed payload), else whole. The URL's ``checksum=crc32|md5|sha256|sha256-chunked``
names one instead.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import zlib
from collections.abc import Sequence
from typing import Any

GATHER = 64 * 1024
"""Parts (or what is left of one) shorter than this are gathered with the ones after them into
one piece of a read, so that small chunks do not each become a ``send`` of their own."""


class BodyCheck(enum.Enum):
    """How a PUT's body is guarded between this process and the S3 server (module docstring)."""

    CRC32 = "crc32"
    MD5 = "md5"
    SHA256 = "sha256"
    SHA256_CHUNKED = "sha256-chunked"
    """SHA-256 too, signed chunk by chunk (`cubby.blockstore.s3chunked`): no PutObject
    arguments, the store sends the body itself."""

    def headers(self, parts: Sequence[bytes | memoryview]) -> dict[str, Any]:
        """The PutObject arguments that carry this check of ``parts``' concatenation. SHA-256
        needs none: botocore computes it for the signature (the client must sign payloads);
        nor does SHA-256 in chunks, whose PUT is not botocore's."""
        if self is BodyCheck.CRC32:
            crc = 0
            for part in parts:
                crc = zlib.crc32(part, crc)
            return {"ChecksumCRC32": base64.b64encode(crc.to_bytes(4, "big")).decode()}
        if self is BodyCheck.MD5:
            md5 = hashlib.md5(usedforsecurity=False)
            for part in parts:
                md5.update(part)
            return {"ContentMD5": base64.b64encode(md5.digest()).decode()}
        return {}


class PartsBody:
    """A read-only, seekable file over the concatenation of ``parts`` (botocore sizes it with
    ``len``, reads it to send and, for a signed payload, to hash it, then seeks back)."""

    def __init__(self, parts: Sequence[bytes | memoryview]) -> None:
        self._parts = [memoryview(p).cast("B") for p in parts if len(p)]
        self._size = sum(len(p) for p in self._parts)
        self._index = 0  # the part the position is in
        self._offset = 0  # the position within that part
        self._pos = 0

    def __len__(self) -> int:
        return self._size

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        target = {0: pos, 1: self._pos + pos, 2: self._size + pos}[whence]
        if not 0 <= target <= self._size:
            raise ValueError(f"seek to {target} outside a body of {self._size} bytes")
        self._index, self._offset, self._pos = 0, target, target
        while self._index < len(self._parts) and self._offset >= len(self._parts[self._index]):
            self._offset -= len(self._parts[self._index])
            self._index += 1
        return target

    def read(self, size: int | None = -1) -> bytes | memoryview:
        """Up to ``size`` bytes, fewer at the end of a large part: a view of the part when the
        read lies in one, else the gathered pieces. Negative or None: all that is left (joined:
        the senders read in sizes, so this is not their path)."""
        if size is None or size < 0:
            rest = []
            while piece := self.read(GATHER):
                rest.append(piece)
            return b"".join(rest)
        want = min(size, self._size - self._pos)
        if want == 0:
            return b""
        part = self._parts[self._index][self._offset :]
        if len(part) >= want or len(part) >= GATHER:
            return self._advance(part[:want])
        gathered: list[memoryview] = []
        got = 0
        while got < want and self._index < len(self._parts):
            part = self._parts[self._index][self._offset :]
            if gathered and len(part) >= GATHER:
                break  # a large part is sent as it is, in reads of its own
            piece = self._advance(part[: want - got])
            gathered.append(piece)
            got += len(piece)
        return b"".join(gathered)

    def _advance(self, piece: memoryview) -> memoryview:
        self._pos += len(piece)
        self._offset += len(piece)
        if self._offset == len(self._parts[self._index]):
            self._index, self._offset = self._index + 1, 0
        return piece

    def close(self) -> None:
        """Nothing to release (the parts belong to the caller); here because readers call it."""

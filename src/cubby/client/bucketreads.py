"""Chunks read straight from the bucket, with reads a blocks process signed (``downloads=direct``).

The server's answer (`/api/v1/blocks/locate`, `cubby.blockstore.direct`) is a plan: signed
GETs of byte ranges of packs, each the stored bytes of some of the chunks asked for, back to
back. Nothing in it is taken on trust: `parse_plan` refuses a plan that names a chunk not
asked for, a URL that is not http(s), a header other than ``Range``, a range whose length is
not its chunks', or lengths beyond a chunk's limits; `read_chunks` reads exactly the bytes
announced, decodes each chunk within its stated size (a zstd payload cannot inflate past it)
and verifies it against its name. Whatever fails is the caller's to fetch through the
blocks process instead (`ApiClient.fetch_chunks`), so a bucket the client cannot reach, an
expired read or a damaged byte costs time, never a wrong file.

The GETs carry no credentials of the client's: its cubby token stays with the cubby server.
A hostile server could still aim them at any http(s) address the client reaches; what comes
back is checked as above and never sent anywhere, so such a GET tells the server nothing a
link in a web page would not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import zstandard

from cubby.core.chunking import MAX_SIZE
from cubby.core.compression import RAW, ZSTD
from cubby.core.frames import ReadInto, fill
from cubby.core.hashing import is_chunk_name, sha256_hex
from cubby.errors import CubbyError

MAX_READ = 64 * 1024 * 1024
"""The most bytes one planned read may announce (the server plans at most 8 MiB, or one
chunk): a plan cannot make the client hold more for one read."""
_RANGE = re.compile(r"^bytes=(\d{1,15})-(\d{1,15})$")


class BadPlan(CubbyError):
    """The server's plan of direct reads is not one this client will follow."""

    code = "bad_plan"
    status = 502


@dataclass(frozen=True, slots=True)
class BucketRead:
    url: str
    range: str
    chunks: list[tuple[str, int, int]]
    """(name, stored length, plain length), back to back from the range's first byte."""

    @property
    def length(self) -> int:
        return sum(stored for _, stored, _ in self.chunks)


@dataclass(slots=True)
class Plan:
    reads: list[BucketRead] = field(default_factory=list)
    fetch: list[str] = field(default_factory=list)
    """Chunks asked for that no read holds: the server said to fetch them, or left them out."""


def parse_plan(answer: Any, asked: Sequence[str]) -> Plan | None:
    """The plan in ``answer`` for the chunks ``asked``, checked (see the module); None when
    the server hands out no direct reads (``{"direct": false}``). `BadPlan` when it is not
    well formed."""
    if not isinstance(answer, dict) or not isinstance(answer.get("direct"), bool):
        raise BadPlan("the server's answer to locate has no 'direct' flag")
    if not answer["direct"]:
        return None
    wanted = set(asked)
    seen: set[str] = set()
    plan = Plan()
    reads, fetch = answer.get("reads"), answer.get("fetch", [])
    if not isinstance(reads, list) or not isinstance(fetch, list):
        raise BadPlan("the server's plan has no list of reads")

    def take(name: object) -> str:
        if not isinstance(name, str) or not is_chunk_name(name) or name not in wanted or name in seen:
            raise BadPlan(f"the server's plan names a chunk that was not asked for, or twice: {str(name)[:80]!r}")
        seen.add(name)
        return name

    for raw in reads:
        if not isinstance(raw, dict):
            raise BadPlan("a read of the server's plan is not an object")
        url, headers, chunks = raw.get("url"), raw.get("headers"), raw.get("chunks")
        if not isinstance(url, str):
            raise BadPlan("a read of the server's plan has no URL")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
            raise BadPlan("a read of the server's plan is not a plain http(s) URL")
        if not isinstance(headers, dict) or set(headers) != {"Range"} or not isinstance(headers["Range"], str):
            raise BadPlan("a read of the server's plan has headers other than one Range")
        m = _RANGE.match(headers["Range"])
        if not isinstance(chunks, list) or not chunks or m is None:
            raise BadPlan("a read of the server's plan has no chunks or no byte range")
        entries: list[tuple[str, int, int]] = []
        for c in chunks:
            if not (isinstance(c, list) and len(c) == 3 and all(isinstance(x, int) and not isinstance(x, bool) for x in c[1:])):
                raise BadPlan("a chunk of the server's plan is not [name, stored length, size]")
            stored, size = c[1], c[2]
            if not (0 <= size <= MAX_SIZE and 1 <= stored <= size + 1):
                raise BadPlan(f"a chunk of the server's plan has impossible lengths ({stored}, {size})")
            entries.append((take(c[0]), stored, size))
        read = BucketRead(url, headers["Range"], entries)
        first, last = int(m.group(1)), int(m.group(2))
        if last - first + 1 != read.length or read.length > MAX_READ:
            raise BadPlan("a read of the server's plan covers other bytes than its chunks")
        plan.reads.append(read)
    plan.fetch = [take(name) for name in fetch]
    plan.fetch += [name for name in dict.fromkeys(asked) if name not in seen]
    return plan


def read_chunks(read: BucketRead, readinto: ReadInto, done: Callable[[], bool]) -> Iterator[tuple[str, bytes | bytearray]]:
    """The chunks of ``read`` from its answer's body (``readinto``), each decoded and verified
    against its name, in order; `BadPlan` at the first that is short, undecodable or wrong,
    or when the body holds more than announced (``done`` is false after the last chunk). A
    raw chunk's bytes are received into the buffer handed out: each byte copied once, by the
    kernel."""
    codec = bytearray(1)
    for name, stored, size in read.chunks:
        if fill(readinto, memoryview(codec)) != 1:
            raise BadPlan(f"the bucket's answer ended before chunk {name}")
        payload = bytearray(stored - 1)
        if fill(readinto, memoryview(payload)) != len(payload):
            raise BadPlan(f"the bucket's answer ended inside chunk {name}")
        data: bytes | bytearray
        if codec[0] == RAW and len(payload) == size:
            data = payload
        elif codec[0] == ZSTD:
            data = _inflate(name, payload, size)
        else:
            raise BadPlan(f"chunk {name} from the bucket is not stored as its plan says")
        if sha256_hex(data) != name:
            raise BadPlan(f"the bucket sent bytes that do not match chunk {name}")
        yield name, data
    if not done():
        raise BadPlan("the bucket's answer holds more than its plan announced")


class PieceReader:
    """``readinto`` over an iterator of byte pieces (httpx's ``iter_raw``): each byte is
    copied once more than on `DirectHttp`, which is how https answers are read anyway."""

    def __init__(self, pieces: Iterator[bytes], on_bytes: Callable[[int], None] | None = None) -> None:
        self._pieces = pieces
        self._on_bytes = on_bytes
        self._left = memoryview(b"")

    def readinto(self, view: memoryview) -> int:
        while not self._left:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            if self._on_bytes:
                self._on_bytes(len(piece))
            self._left = memoryview(piece)
        n = min(len(view), len(self._left))
        view[:n] = self._left[:n]
        self._left = self._left[n:]
        return n

    def ended(self) -> bool:
        """Whether nothing is left of the body (it is read to its end to tell)."""
        return self.readinto(memoryview(bytearray(1))) == 0


def _inflate(name: str, payload: bytearray, size: int) -> bytes:
    """``payload`` decompressed, never to more than ``size`` + 1 bytes whatever its frame
    claims (a hostile frame cannot make the client allocate more)."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(bytes(payload)) as reader:
            data = b""
            while len(data) <= size and (piece := reader.read(size + 1 - len(data))):
                data += piece
    except zstandard.ZstdError as exc:
        raise BadPlan(f"chunk {name} from the bucket does not decompress: {exc}") from exc
    if len(data) != size:
        raise BadPlan(f"chunk {name} from the bucket decompresses to {len(data)} bytes, not {size}")
    return data

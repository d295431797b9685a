"""The object store seam: where pack files live (a local folder, or an S3-compatible bucket).

A pack store (`cubby.blockstore.packs`) keeps chunks inside large immutable objects and an
index of where each chunk is; this Protocol is all it asks of the place those objects live.
It is small on purpose, so that any S3-compatible service (AWS S3, Ceph RGW, MinIO, Garage)
and a plain folder can both implement it with their most ordinary calls.

The contract, for every implementation:

- Names are relative, `/`-separated, made of ``[A-Za-z0-9._/-]``; no empty, ``.`` or ``..``
  component. The caller chooses them (for example ``packs/ab/ab12….pack``).
- `put` is atomic and durable when it returns: a reader sees the whole object or nothing,
  never a prefix, and a crash after `put` returned never loses it (local: write a temp file,
  fsync, rename, fsync the folder; S3: a completed PUT). Putting the same name again with the
  same bytes is allowed and harmless (a retried request); objects are never modified.
- `get` reads ``length`` bytes at ``offset`` (the whole object when both are left out), with
  one ranged read (local: ``pread``; S3: a ranged GET). It raises `ObjectMissing` when the
  object does not exist, and `ShortRead` (an `ObjectStoreError`) for a read that came back
  short because the object ends first.
- `delete` is idempotent: deleting a missing object is not an error.
- `list` yields ``(name, size)`` of every object whose name starts with ``prefix``, each exactly
  once, in no particular order; it may or may not see objects put while it runs.
- Transient faults (a dropped connection, 500, 503, SlowDown) are retried inside the
  implementation with backoff; what reaches the caller as `ObjectStoreError` is final for that
  call. Every method may be called from several threads at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cubby.core.hashing import Sha256State
from cubby.errors import CubbyError, NotFound


class ObjectStoreError(CubbyError):
    """The object store failed in a way that retrying inside the call did not mend."""

    status = 503
    code = "object_store_error"


class ShortRead(ObjectStoreError):
    """The object ends before the range asked for. ``available`` holds the bytes it does have
    from the offset on (empty when the offset is at or past its end), so that a caller that
    asked for "up to" a length (read-ahead) need not read them again."""

    def __init__(self, message: str, available: bytes = b"") -> None:
        super().__init__(message)
        self.available = available


class ObjectMissing(NotFound):
    """No object of that name."""

    code = "object_missing"


@runtime_checkable
class ObjectStore(Protocol):
    def put(self, name: str, data: bytes) -> None:
        """Store ``data`` as ``name``, atomically and durably, before returning."""

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes of ``name`` from ``offset`` (all of it when length is None)."""

    def delete(self, name: str) -> None:
        """Remove ``name``; a missing object is fine."""

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """``(name, size)`` of each object under ``prefix``, each once."""

    def close(self) -> None:
        """Release connections and files."""


@runtime_checkable
class StreamingPut(Protocol):
    """An object store that can also store an object whose bytes are still being produced.

    `put_parts` stores the concatenation of ``parts`` with `ObjectStore.put`'s promises (atomic,
    durable when it returns). If the iterable raises, nothing is stored and the error
    propagates. A store that can write as it goes (a folder) takes each part as the iterable
    yields it, so that the work of producing the next part (a pack store verifying the next
    chunks) overlaps the writing of the last. A store that must hold the whole object before
    it sends it (one S3 PUT, whose length and checksum come first) takes all the parts first,
    then sends them as they are: what it saves is the join of the parts into one buffer (a
    copy of every byte of every pack). Wrappers (retry, read-ahead) pass the parts on.

    ``sha256``, when given, holds SHA-256 hashers of some of the parts, by their position in
    ``parts``, each fed exactly that part's bytes; it is complete once ``parts`` is exhausted.
    A store that must hash the body (an S3 PUT whose payload is signed in chunks,
    `cubby.blockstore.s3chunked`) copies them instead of reading those parts again; it never
    feeds them. Others ignore it."""

    def put_parts(
        self, name: str, parts: Iterable[bytes | memoryview], sha256: Mapping[int, Sha256State] | None = None
    ) -> None:
        """Store the concatenation of ``parts`` as ``name``, atomically and durably."""


@dataclass(frozen=True, slots=True)
class SignedRead:
    """A request anyone may make, without credentials, for a while: GET ``url`` with
    ``headers`` (the ``Range`` among them, which the signature covers, so that no other bytes
    of the object can be had with it)."""

    url: str
    headers: Mapping[str, str]


@runtime_checkable
class SignedReads(Protocol):
    """An object store that can hand out reads of its objects to someone without its
    credentials: S3's presigned URLs. A pack store gives them to a client that may read
    the chunks in those bytes (`cubby.blockstore.direct`), so that the bytes go from the
    bucket to the client and not through a blocks process."""

    def signed_read(self, name: str, offset: int, length: int) -> SignedRead | None:
        """A read of ``length`` bytes of ``name`` at ``offset``, valid for a few minutes; None
        where this store hands out none (not configured to, or it cannot)."""


SIGNED_CHUNK_MIN = 8 * 1024
"""The least a chunk of an ``aws-chunked`` body may hold, but the last (AWS's rule). Here, not
in `cubby.blockstore.s3chunked`, so that what plans direct puts need not load botocore."""


@dataclass(frozen=True, slots=True)
class SignedPut:
    """A PUT anyone may send, without credentials, for a few minutes: to ``url``, with
    ``headers``, a body in SigV4's ``aws-chunked`` encoding whose chunks carry
    ``signatures`` in order (the last, the final empty chunk's). Each chunk's signature signs
    its SHA-256, so the bucket stores the object only if every chunk is the bytes it was
    signed for (`cubby.blockstore.s3.S3ObjectStore.signed_put`)."""

    url: str
    headers: Mapping[str, str]
    signatures: list[str]


@runtime_checkable
class SignedPuts(Protocol):
    """An object store that can hand out writes of new objects whose bytes it names by their
    chunks' SHA-256, and say how long an object is: S3 with ``uploads=direct``. A pack store
    hands them to clients (`cubby.blockstore.directput`), so that upload bytes go to the bucket
    and not through a blocks process."""

    def signed_put(self, name: str, chunks: Sequence[tuple[int, str]]) -> SignedPut | None:
        """A PUT of ``name`` made of ``chunks`` (size, SHA-256 hex), valid for a few minutes;
        None where this store hands out none (not configured to, or its server would not
        check the chunks)."""

    def stored_size(self, name: str) -> int | None:
        """The size of ``name``, or None when there is no such object."""


def signed_put(store: ObjectStore, name: str, chunks: Sequence[tuple[int, str]]) -> SignedPut | None:
    """``store.signed_put`` where ``store`` hands them out (`SignedPuts`), else None."""
    return store.signed_put(name, chunks) if isinstance(store, SignedPuts) else None


def stored_size(store: ObjectStore, name: str) -> int | None:
    """The size of object ``name`` in ``store``, or None when there is none: ``store.stored_size``
    where it has one (`SignedPuts`: a HEAD request), else what its `list` says of that name."""
    if isinstance(store, SignedPuts):
        return store.stored_size(name)
    return next((size for found, size in store.list(name) if found == name), None)


def signed_read(store: ObjectStore, name: str, offset: int, length: int) -> SignedRead | None:
    """``store.signed_read`` where ``store`` hands them out (`SignedReads`), else None: how a
    wrapper passes the call on to a store it does not know."""
    return store.signed_read(name, offset, length) if isinstance(store, SignedReads) else None


def put_in_parts(
    store: ObjectStore,
    name: str,
    parts: Iterable[bytes | memoryview],
    sha256: Mapping[int, Sha256State] | None = None,
) -> None:
    """``store.put_parts`` where ``store`` takes parts (`StreamingPut`), else its `put` of the
    parts joined: how a wrapper passes parts on to a store it does not know."""
    if isinstance(store, StreamingPut):
        store.put_parts(name, parts, sha256)
    else:
        store.put(name, b"".join(parts))


def open_object_store(url: str) -> ObjectStore:
    """The object store a ``--blocks`` URL names: a folder path (or ``file://PATH``), or
    ``s3://BUCKET/PREFIX?endpoint=…&region=…``. Each scheme is one branch here."""
    url = url.removeprefix("file://")
    if "://" not in url:
        from cubby.blockstore.folder import FolderObjectStore

        return FolderObjectStore(url)
    if url.startswith("s3://"):
        from cubby.blockstore.s3 import open_s3_object_store

        return open_s3_object_store(url)
    scheme = url.split("://", 1)[0]
    raise ObjectStoreError(f"unsupported block store URL scheme {scheme!r}: use a folder path or s3://")

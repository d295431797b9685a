"""The block store interface: chunks of plaintext, each stored under the SHA-256 of its bytes.

The comments are the contract, for every backend (local folder, memory, later S3):

- Names are lowercase hex SHA-256 of the *plaintext*. `put` and `put_many` verify the bytes
  against the name before anything is written and raise `ChunkMismatch` (nothing written) if
  they disagree, so a backend never holds a chunk under a name that does not match its bytes.
- `put`/`put_many` are durable when they return (fsync or the backend's equivalent) and
  idempotent: putting a chunk that is already there is cheap and returns False.
- `get` returns the plaintext, or raises `NotFound`. `get_many` returns the plaintext of
  those of its names that are stored (absent ones are left out, never an error), with one
  lookup where the backend can: its cost should depend little on how many are present, since
  the possession check relies on that. `delete` is idempotent.
- `read_many` yields ``(name, plaintext)`` for each of ``names`` in the order given (a name
  given twice comes twice), and raises `NotFound` when it reaches one that is absent. It is
  how a caller that streams many chunks (a download) lets the backend look them up in one
  query and read neighbouring chunks with one request; `get` in a loop is a correct one.
- `iterate` yields every stored name exactly once, in no particular order; it may or may not
  see chunks put while it runs.
- Compression is the backend's own business (callers always see plaintext); see
  `cubby.core.compression`.
- A backend may be called from several threads at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

Plain = bytes | memoryview
"""A chunk's plaintext as `BlockStore.read_many` yields it: bytes, or with ``verify=False`` a
view of bytes nobody writes to."""


@runtime_checkable
class BlockStore(Protocol):
    def put(self, name: str, data: bytes) -> bool:
        """Store ``data`` under ``name`` durably; True if it was not there before."""

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> list[bool]:
        """Store many chunks with one durability barrier; all are verified before any is written."""

    def get(self, name: str) -> bytes:
        """The plaintext of ``name``; `NotFound` if absent."""

    def get_many(self, names: Sequence[str]) -> dict[str, bytes]:
        """The plaintext of each of ``names`` that is stored; absent ones are left out."""
    def read_many(self, names: Sequence[str], *, verify: bool = True) -> Iterator[tuple[str, Plain]]:
        """``(name, plaintext)`` of each of ``names``, in order; `NotFound` at the first absent.
        ``verify=False`` skips hashing what was read, for a caller that hashes every chunk
        itself (the fetch route: the client verifies each chunk it receives); a stored chunk
        that does not decode is still refused. A plaintext may then be a read-only
        `memoryview` into a larger read (an uncompressed chunk of a pack's extent), so that
        a chunk that is only sent on is not copied once more on the way."""

    def has(self, name: str) -> bool: ...

    def present(self, names: Iterable[str]) -> set[str]:
        """Those of ``names`` that are stored (``has`` for many, in one lookup where it can)."""

    def delete(self, name: str) -> None: ...

    def iterate(self) -> Iterator[str]: ...


@runtime_checkable
class StagedPut(Protocol):
    """A store whose `put_many` records what it wrote in a database transaction of its own
    (the pack store's index) and that can leave that recording to the caller's transaction
    instead: an upload then commits once, not twice (each commit is a flush of the database's
    log to disk)."""

    def stage_many(
        self, items: Sequence[tuple[str, bytes]], within: object
    ) -> tuple[list[bool], Callable[[], None]] | None:
        """None, having done nothing, unless what records this store's chunks writes to
        ``within`` (a metadata `Database`) and so joins a write transaction open on it. Else
        `put_many`'s answer and a function that makes the chunks findable: their bytes are
        durable already, and the caller calls the function inside its write transaction on
        ``within``, before anything in it looks the chunks up, so that they are findable
        once that transaction commits and not before. Chunks never recorded are dead bytes,
        as when a writer dies between writing and recording (see the store's compaction)."""

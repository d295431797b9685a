"""The metadata store's interface: what the server roles may ask of it.

Contract for every implementation (today one, `SqlMetadataStore`, on SQLite, PostgreSQL or
MariaDB through SQLAlchemy Core):

- Paths given here are paths *inside a namespace*, already normalised by
  `cubby.core.paths.normalize`. Access control is not done here: the server's access layer
  checks the caller's `Principal` before calling, so a method trusts the namespace it is given.
- Every mutating call is one database transaction. It either appends exactly one journal entry
  per changed node (with the next gap-free journal id of that namespace) and updates the latest
  state and reference counts, or changes nothing and raises.
- `Conflict` is raised when the state differs from what the caller expected (a stale
  ``expected_rev``, a name already taken, a file where a folder is needed); `NotFound` when the
  path or revision does not exist; `BadRequest` subclasses for input that can never succeed.
  Errors with ``retryable = True`` may be retried unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from cubby.blockstore.base import BlockStore
from cubby.errors import CubbyError
from cubby.metadata.model import (
    ChunkRef,
    CommitRequest,
    CommitResult,
    Entry,
    GcStats,
    JournalEntry,
    Listing,
    Principal,
    Revision,
    User,
)


class MetadataStore(Protocol):
    # --- accounts -------------------------------------------------------------------------
    def create_user(self, name: str) -> tuple[User, str]:
        """Create a user with a root namespace; return it and a new bearer token (shown once)."""

    def get_user(self, name: str) -> User: ...

    def create_token(self, user_id: int, label: str = "") -> tuple[int, str]:
        """Return (token id, token). Only a hash of the token is stored."""

    def list_tokens(self, user_id: int) -> list[dict[str, object]]: ...

    def revoke_token(self, user_id: int, token_id: int) -> None:
        """Revoke one of the user's tokens; `NotFound` for a token that is not theirs."""

    def authenticate(self, token: str) -> Principal:
        """Map a bearer token to its principal; `Unauthorized` if unknown or revoked."""

    # --- files ----------------------------------------------------------------------------
    def commit(self, user_id: int, ns_id: int, req: CommitRequest) -> CommitResult:
        """Apply a file commit if every chunk is available to this namespace, else say which
        chunks are needed (and change nothing). Missing parent folders are created."""

    def commit_many(
        self, user_id: int, ns_id: int, reqs: Sequence[CommitRequest]
    ) -> list[CommitResult | CubbyError]:
        """Many commits in one transaction (for many small files); each gets its own outcome,
        and a failed one does not stop the others."""

    def mkdir(self, user_id: int, ns_id: int, path: str) -> Entry:
        """Create a folder (and its missing parents); an existing folder is returned as is."""

    def delete(self, user_id: int, ns_id: int, path: str, expected_rev: int | None = None) -> Entry:
        """Delete a file or a folder with everything below it; history keeps the revisions."""

    def move(
        self, user_id: int, ns_id: int, src: str, dst: str, expected_rev: int | None = None
    ) -> Entry:
        """Rename or move within a namespace: metadata only, one journal entry, even for a
        folder. `Conflict` if ``dst`` exists (unless it is ``src`` in another case)."""

    def stat(self, ns_id: int, path: str) -> Entry: ...

    def list(
        self, ns_id: int, path: str, recursive: bool = False, cursor: str | None = None, limit: int = 1000
    ) -> Listing:
        """Children of a folder (or its whole subtree), parents before children, paged by an
        opaque cursor."""

    def history(self, ns_id: int, path: str, limit: int = 100) -> list[Revision]:
        """Revisions of the file at ``path`` (or last deleted there), newest first."""

    def restore(self, user_id: int, ns_id: int, path: str, rev: int) -> Entry:
        """Make revision ``rev`` of the file at ``path`` current again (a new revision)."""

    def blocklist(self, ns_id: int, path: str, rev: int | None = None) -> tuple[Entry, list[ChunkRef]]:
        """The chunks of the current (or given) revision of a file, in order."""

    # --- journal --------------------------------------------------------------------------
    def head(self, ns_id: int) -> int:
        """The newest journal id of the namespace (0 when empty)."""

    def journal(self, ns_id: int, after: int, limit: int = 1000) -> list[JournalEntry]:
        """Entries with jid > ``after`` in order, at most ``limit``: an index range scan."""

    # --- chunks ---------------------------------------------------------------------------
    def chunk_readable(self, ns_ids: Iterable[int], hashes: Sequence[str]) -> set[str]:
        """Which of ``hashes`` a caller who can read ``ns_ids`` may download or reuse."""

    def ingest_chunks(self, ns_id: int, items: Sequence[tuple[str, bytes]], blocks: BlockStore) -> int:
        """Store verified chunks in ``blocks`` durably and make them available to ``ns_id``.

        Safe against a concurrent garbage collection of the same chunk. Returns the number of
        chunks that were newly written. `ChunkMismatch` if any bytes do not match their name
        (and then none of the batch is made available)."""

    def challenge(self, user_id: int, ns_id: int, chunk_hash: str) -> str:
        """The nonce (hex) for a proof of possession of ``chunk_hash`` by this user."""

    def accept_proofs(
        self, user_id: int, ns_id: int, proofs: dict[str, str], blocks: BlockStore
    ) -> tuple[list[str], list[str]]:
        """Check SHA-256(nonce || bytes) answers; return (accepted, rejected) hashes. Accepted
        chunks become available to ``ns_id``. A chunk the server lacks is rejected: upload it."""

    def collect_garbage(self, blocks: BlockStore, grace_seconds: float) -> GcStats:
        """Remove chunks no revision references and nobody touched within the grace period."""

    def close(self) -> None: ...

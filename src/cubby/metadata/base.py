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

import builtins
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from cubby.blockstore.base import BlockStore
from cubby.errors import CubbyError
from cubby.model import (
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

if TYPE_CHECKING:
    from cubby.metadata.accounts import Accounts
    from cubby.metadata.links import LinkStore
    from cubby.metadata.possession import Checked, ChunkReader, Claim
    from cubby.metadata.shares import SharingChange
    from cubby.metadata.users import Disabled


class SharingOps(Protocol):
    """Shared folders (`cubby.metadata.shares.Sharing`). Every call is atomic; each answers a
    `SharingChange` naming the journal heads it moved and the users whose namespaces changed."""

    def share(self, user_id: int, root_ns: int, path: str, invitee: Any, role: Any = "editor") -> SharingChange:
        """Share the folder at ``path`` of the owner's root (turning it into a namespace the first
        time, metadata only) and invite ``invitee``, or change their role. `NotFound` for a
        missing path or user, `BadRequest` for a file, the root, oneself or a bad role,
        `Conflict` for a folder holding a shared folder, `Forbidden` for a non-owner."""

    def accept(self, user_id: int, root_ns: int, ns_id: int) -> SharingChange:
        """Mount the shared folder in the user's root under a name that collides with nothing."""

    def remove_member(self, user_id: int, ns_id: int, member: Any) -> SharingChange: ...

    def leave(self, user_id: int, ns_id: int) -> SharingChange: ...

    def unshare(self, user_id: int, ns_id: int) -> SharingChange:
        """Members lose the folder; the owner's mount becomes a folder with its current contents."""

    def list_shares(self, user_id: int) -> list[dict[str, Any]]: ...

    def cut(self, ns_id: int) -> int | None:
        """The last journal id the share copied into ``ns_id`` (None if not made by a share)."""

    def recover(self) -> int:
        """Finish or undo the shares across shards whose process died (0 on one database)."""


class CrossNamespaceMoves(Protocol):
    """Moves between namespaces (`cubby.metadata.moves.CrossMoves`): never one transaction
    over two namespaces; an intent record makes an interrupted move recoverable."""

    def move(
        self, user_id: int, src_ns: int, src: str, dst_ns: int, dst: str, expected_rev: int | None = None
    ) -> Entry:
        """Move a file or folder; after a crash at any point, `recover` leaves it in exactly one
        of the two namespaces. `Conflict` (nothing moved) if it changed during the move."""

    def recover(self) -> int:
        """Finish or undo the moves whose owner is gone (`cubby.metadata.leases`); idempotent.
        Returns how many it handled."""


class MetadataStore(Protocol):
    """What the server holds (`cubby.server.context.ServerContext.store`): `SqlMetadataStore`,
    or `cubby.cache.store.CachedStore` wrapping it. Both are checked against this by mypy."""

    @property
    def sharing(self) -> SharingOps: ...

    @property
    def moves(self) -> CrossNamespaceMoves: ...

    @property
    def links(self) -> LinkStore:
        """Public links (`cubby.metadata.links.LinkStore`), each on its namespace's shard."""

    def deleted(self, ns_id: int, folder: str) -> list[dict[str, Any]]:
        """Files deleted directly in ``folder`` of ``ns_id`` (`cubby.metadata.deleted`)."""

    def reading(self) -> AbstractContextManager[None]:
        """Within, on this thread, reads join one read transaction per database (a request
        that authenticates and reads opens one transaction, not three: `Database.reading`)."""

    @property
    def accounts(self) -> Accounts:
        """Passwords and web sessions (`cubby.metadata.accounts.Accounts`)."""

    # --- accounts -------------------------------------------------------------------------
    def create_user(self, name: str) -> tuple[User, str]:
        """Create a user with a root namespace; return it and a new bearer token (shown once)."""

    def get_user(self, name: str) -> User: ...

    def list_users(self) -> list[dict[str, object]]:
        """Every user, by id: id, name, root namespace, created_at, disabled_at (None: active),
        and active (unrevoked) tokens."""

    def create_token(self, user_id: int, label: str = "") -> tuple[int, str]:
        """Return (token id, token). Only a hash of the token is stored."""

    def list_tokens(self, user_id: int) -> list[dict[str, object]]: ...

    def revoke_token(self, user_id: int, token_id: int) -> None:
        """Revoke one of the user's tokens; `NotFound` for a token that is not theirs."""

    def set_disabled(self, name: str, disabled: bool, *, revoke_tokens: bool = False) -> Disabled:
        """Disable user ``name`` (their tokens, sessions and links refused, nothing deleted;
        ``revoke_tokens``: their tokens revoked for good) or enable them again. One
        transaction; `NotFound` for an unknown name."""

    def authenticate(self, token: str, *, fresh: bool = False) -> Principal:
        """Map a bearer token to its principal; `Unauthorized` if unknown or revoked,
        `AccountDisabled` if its user is disabled.
        ``fresh``: bypass any cache (a wrapper's concern; the store always reads afresh)."""

    def user_can_read(self, user_id: int, ns_id: int) -> bool:
        """Whether ``user_id`` reaches ``ns_id`` now (their root, or an active membership)."""

    # --- files ----------------------------------------------------------------------------
    def commit(self, user_id: int, ns_id: int, req: CommitRequest, readable: Iterable[int] = ()) -> CommitResult:
        """Apply a file commit if every chunk is available to this namespace (or held by one of
        the ``readable`` namespaces the caller can read), else say which chunks are needed (and
        change nothing). Missing parent folders are created. `NamespaceMoved` (retryable,
        nothing changed) when the path lies below a folder that became a shared folder."""

    def commit_many(
        self, user_id: int, ns_id: int, reqs: Sequence[CommitRequest], readable: Iterable[int] = ()
    ) -> list[CommitResult | CubbyError]:
        """Many commits in one transaction (for many small files); each gets its own outcome,
        and a failed one does not stop the others."""

    def mkdir(self, user_id: int, ns_id: int, path: str) -> Entry:
        """Create a folder (and its missing parents); an existing folder is returned as is."""

    def mkdir_many(self, user_id: int, ns_id: int, paths_: Sequence[str]) -> builtins.list[Entry | CubbyError]:
        """Many `mkdir`s in one transaction, each with its own outcome (`NamespaceMoved`
        among them when a path now lies in a shared folder); a refused one writes nothing."""

    def delete(
        self,
        user_id: int,
        ns_id: int,
        path: str,
        expected_rev: int | None = None,
        *,
        forget_through: int | None = None,
        unchanged_since: int | None = None,
    ) -> Entry:
        """Delete a file or a folder with everything below it; history keeps the revisions
        (except those up to ``forget_through``: see `SqlMetadataStore.delete`)."""

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

    def history(self, ns_id: int, path: str, limit: int = 100) -> builtins.list[Revision]:
        """Revisions of the file at ``path`` (or last deleted there), newest first."""

    def restore(self, user_id: int, ns_id: int, path: str, rev: int) -> Entry:
        """Make revision ``rev`` of the file at ``path`` current again (a new revision)."""

    def blocklist(self, ns_id: int, path: str, rev: int | None = None) -> tuple[Entry, builtins.list[ChunkRef]]:
        """The chunks of the current (or given) revision of a file, in order."""

    def blocklists(
        self, ns_id: int, paths_: Sequence[str]
    ) -> builtins.list[tuple[Entry, builtins.list[ChunkRef]] | CubbyError]:
        """The current chunk lists of many files in one read, each with its own outcome."""

    # --- journal --------------------------------------------------------------------------
    def head(self, ns_id: int) -> int:
        """The newest journal id of the namespace (0 when empty)."""

    def heads(self, ns_ids: Iterable[int]) -> dict[int, int]:
        """The newest journal ids of many namespaces, read afresh from the database (never a
        cache: the notification role compares cursors against them); unknown ids are left out."""

    def journal(self, ns_id: int, after: int, limit: int = 1000) -> builtins.list[JournalEntry]:
        """Entries with jid > ``after`` in order, at most ``limit``: an index range scan."""

    # --- chunks ---------------------------------------------------------------------------
    def chunk_readable(self, ns_ids: Iterable[int], hashes: Sequence[str]) -> set[str]:
        """Which of ``hashes`` a caller who can read ``ns_ids`` may download or reuse."""

    def readable_sizes(self, ns_ids: Iterable[int], hashes: Sequence[str]) -> dict[str, int]:
        """`chunk_readable` with the plaintext size of each chunk (its ``blocks`` row), so that a
        download can state its length before it reads a single chunk."""

    def ingest_chunks(self, ns_id: int, items: Sequence[tuple[str, bytes]], blocks_store: BlockStore) -> int:
        """Store verified chunks in ``blocks_store`` durably and make them available to ``ns_id``.

        Safe against a concurrent garbage collection of the same chunk. Returns the number of
        chunks that were newly written. `ChunkMismatch` if any bytes do not match their name
        (and then none of the batch is made available)."""

    def ingest_direct(self, ns_id: int, pack: str, chunks: Sequence[tuple[str, int]], blocks_store: BlockStore) -> int:
        """`ingest_chunks` for pack ``pack``, which a client put in the bucket itself, laid out
        for ``chunks`` (`cubby.blockstore.directput`): `PackNotStored` unless the bucket holds
        it; else its chunks are indexed and made available to ``ns_id``. Returns how many were new."""

    def direct_put_ticket(self, user_id: int, ns_id: int, pack: str, chunks: Sequence[tuple[str, int]], expires: int) -> str:
        """The seal that binds a pack handed to a client to put to that user, namespace, layout
        and expiry (`cubby.metadata.chunks.ChunkAccess.direct_put_ticket`)."""

    def challenge(self, user_id: int, ns_id: int, chunk_hash: str, size: int) -> str:
        """The nonce (hex) for a proof of possession of ``chunk_hash`` (``size`` bytes) by this user."""

    def proof_key(self, user_id: int, ns_id: int) -> dict[str, Any]:
        """This hour's proof key of (user, namespace): ``{"window", "key", "valid_for"}``, from
        which the user computes its own nonces (`cubby.metadata.possession`)."""

    def accept_proofs(
        self, user_id: int, ns_id: int, claims: Sequence[Claim], blocks_store: ChunkReader,
        *, within: Iterable[int] | None = None,
    ) -> Checked:
        """Check proofs of possession (`cubby.core.proofs`, each with its claim's algorithm); accepted chunks become available to ``ns_id``.
        A chunk the server lacks (or, with ``within``, that those namespaces lack) is rejected
        after the same work as a held one: upload it."""

    def collect_garbage(
        self, blocks_store: BlockStore, grace_seconds: float, *, progress: Callable[[GcStats], None] | None = None
    ) -> GcStats:
        """Remove chunks no revision references and nobody touched within the grace period;
        ``progress`` sees the counts so far as it goes."""

    def close(self) -> None: ...

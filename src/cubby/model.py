"""Plain records that cross the wire and the metadata store's interface.

They are frozen dataclasses so that the server can turn them into JSON with `to_dict` and the
client can rebuild them with `from_dict`, and nothing downstream mutates what the store said.
They live outside the metadata package because the client, the notify front and the core (zip
streams) use them too, and none of those may import the metadata store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["file", "folder", "mount"]
"""A "mount" node stands in its namespace for a shared folder: another namespace, mounted there."""
Role = Literal["owner", "editor", "viewer"]
JournalOp = Literal["add", "edit", "mkdir", "delete", "move", "restore", "mount", "unmount"]


@dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: its SHA-256 (hex) and its plaintext length."""

    hash: str
    size: int

    @classmethod
    def of(cls, hash: str, size: int) -> ChunkRef:
        """``ChunkRef(hash, size)`` made without the frozen dataclass's ``object.__setattr__``
        per field (see `Entry.file`): a commit batch parses one per chunk of 1,000 files."""
        c = object.__new__(cls)
        c.__dict__.update({"hash": hash, "size": size})
        return c


@dataclass(frozen=True)
class User:
    id: int
    name: str
    root_ns: int


@dataclass(frozen=True)
class Principal:
    """Who is asking, and which namespaces they can reach with what role.

    ``namespaces`` maps namespace id to role; every access check is a lookup here, so a token
    never reaches a namespace that is not in this map. It is read afresh from the database on
    every request, so a removed member loses access with their next request.
    """

    user_id: int
    name: str
    root_ns: int
    token_id: int
    namespaces: dict[int, Role] = field(default_factory=dict)
    mounts: dict[str, int] = field(default_factory=dict)
    """Shared folders in the user's tree: mount path (display spelling) -> namespace id."""

    def can_read(self, ns_id: int) -> bool:
        return ns_id in self.namespaces

    def can_write(self, ns_id: int) -> bool:
        return self.namespaces.get(ns_id) in ("owner", "editor")


@dataclass(frozen=True)
class Entry:
    """The latest state of one node (file or folder) in a namespace.

    ``node_id`` is stable across renames and moves; ``rev`` is the journal id of the change that
    produced this version, so it increases with every change in the namespace.
    """

    ns_id: int
    node_id: int
    parent_id: int | None
    path: str
    name: str
    kind: Kind
    rev: int
    size: int = 0
    content_hash: str | None = None
    mtime: float | None = None
    deleted: bool = False
    target_ns: int | None = None
    """For kind "mount": the namespace mounted at this path."""
    mode: int | None = None
    """For files: `FILE_MODES` (None, from before modes were kept: a regular file)."""

    def to_dict(self) -> dict[str, Any]:
        # Every field is a scalar: a shallow copy is `asdict` without its recursive deep copy,
        # which cost most of the server CPU of a warm listing of 100 entries (24 µs against 2).
        # The instance's own dict holds exactly the fields, in order (a frozen dataclass sets
        # each once, in `__init__`): copying it is a tenth of a getattr per field, and a
        # commit batch answers 1,000 entries.
        return dict(self.__dict__)

    @classmethod
    def file(
        cls, ns_id: int, node_id: int, parent_id: int, path: str, name: str, rev: int, size: int,
        content_hash: str, mtime: float | None, mode: int | None,
    ) -> Entry:
        """A live file's entry, equal to ``Entry(...)`` with these fields (the others at their
        defaults) but made without the frozen dataclass's ``object.__setattr__`` per field: a
        fifth of the CPU, for the entry a commit answers, 1,000 to a batch. The fields go in
        their declared order, as `__init__` puts them, so that `to_dict` is the same too."""
        e = object.__new__(cls)
        e.__dict__.update({
            "ns_id": ns_id, "node_id": node_id, "parent_id": parent_id, "path": path, "name": name, "kind": "file",
            "rev": rev, "size": size, "content_hash": content_hash, "mtime": mtime, "deleted": False, "target_ns": None,
            "mode": mode,
        })
        return e

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        fields = cls.__dataclass_fields__
        if tuple(d) == _ENTRY_FIELDS:
            # What a server of this release answers: every field, in order. Made as `file`
            # makes one, a quarter of ``cls(**d)``'s CPU (a listing or a commit batch
            # answers thousands).
            e = object.__new__(cls)
            e.__dict__.update(d)
            return e
        if fields.keys() >= d.keys():  # no field unknown to this release (some left out)
            return cls(**d)
        return cls(**{k: d.get(k) for k in fields if k in d})  # type: ignore[arg-type]


_ENTRY_FIELDS = tuple(Entry.__dataclass_fields__)
"""`Entry`'s fields in their declared order (`Entry.from_dict`'s usual case)."""


@dataclass(frozen=True)
class Revision:
    """One stored version of a file, as history lists it; ``rev`` can be given to restore."""

    ns_id: int
    node_id: int
    rev: int
    path: str
    size: int
    content_hash: str | None
    mtime: float | None
    created_at: float
    deleted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JournalEntry:
    """One change in a namespace's journal, in ``jid`` order.

    A move carries ``old_path`` and ``old_parent_id``; a folder move is a single entry, and a
    reader keyed by ``node_id`` applies it as one update. Parents are journalled before
    their children, so a reader never sees a child whose parent it does not know.
    """

    ns_id: int
    jid: int
    op: JournalOp
    node_id: int
    parent_id: int | None
    kind: Kind
    path: str
    name: str
    rev: int
    size: int = 0
    content_hash: str | None = None
    mtime: float | None = None
    old_path: str | None = None
    old_parent_id: int | None = None
    user_id: int | None = None
    created_at: float = 0.0
    mode: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JournalEntry:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__ if k in d})  # type: ignore[arg-type]


@dataclass(frozen=True)
class CommitRequest:
    """What a client asks to commit: a file at ``path`` made of ``chunks``.

    ``expected_rev`` is the revision the client last saw at ``path`` (None: the path must not
    hold a live file). A stale one is refused with `Conflict`, never applied over a newer
    version. ``size`` must equal the sum of the chunk sizes.
    """

    path: str
    size: int
    chunks: tuple[ChunkRef, ...]
    expected_rev: int | None = None
    mtime: float | None = None
    mode: int | None = None

    @classmethod
    def of(
        cls, path: str, size: int, chunks: tuple[ChunkRef, ...], expected_rev: int | None,
        mtime: float | None, mode: int | None,
    ) -> CommitRequest:
        """``CommitRequest(...)`` with every field, made as `Entry.file` makes an entry (a
        third of the CPU: a batch parses 1,000)."""
        r = object.__new__(cls)
        r.__dict__.update({
            "path": path, "size": size, "chunks": chunks, "expected_rev": expected_rev, "mtime": mtime, "mode": mode,
        })
        return r


REGULAR, EXECUTABLE, SYMLINK = 0o100644, 0o100755, 0o120000
FILE_MODES = (REGULAR, EXECUTABLE, SYMLINK)
"""A file's mode, as git spells it: a regular file, an executable one, or a symbolic link whose
target is the file's content. Only these travel: other permission bits are the receiver's
business (its umask), as with git."""

@dataclass(frozen=True)
class NeededChunk:
    """A chunk the store will not take on the client's word: upload it, or prove possession
    by sending a proof over the chunk's bytes under the nonce (`cubby.core.proofs.proof_hex`
    of bytes.fromhex(nonce)). The answer is the same whether or
    not the server already holds the chunk, so a hash-only claim learns nothing."""

    hash: str
    nonce: str
    base: tuple[str, ...] = ()
    """Chunks of the version being replaced, at the same place in the file (usually one): the
    client may send this chunk as a patch against their concatenation (`cubby.core.delta`)."""
    window: int | None = None
    """The hour the nonce was made for; a proof that names it is hashed once by the server,
    not once per hour it could be (`cubby.metadata.possession`)."""


@dataclass(frozen=True)
class CommitResult:
    """Either ``entry`` (committed) or ``needed`` (nothing changed; supply these, then retry)."""

    entry: Entry | None = None
    needed: tuple[NeededChunk, ...] = ()

    @classmethod
    def of_entry(cls, entry: Entry) -> CommitResult:
        """``CommitResult(entry=entry)``, made as `Entry.file` makes an entry (one per file of
        a commit batch)."""
        r = object.__new__(cls)
        r.__dict__.update({"entry": entry, "needed": ()})
        return r

    @property
    def committed(self) -> bool:
        return self.entry is not None


@dataclass(frozen=True)
class Listing:
    entries: list[Entry]
    cursor: str | None
    has_more: bool


@dataclass(frozen=True)
class GcStats:
    examined: int = 0
    deleted: int = 0
    bytes_freed: int = 0

"""`SqlMetadataStore`: the metadata store on SQLite, PostgreSQL or MariaDB.

How a mutation stays atomic and the journal gap-free: every write transaction first locks its
namespace's row (``SELECT ... FOR UPDATE``; on SQLite ``BEGIN IMMEDIATE`` already holds the
database's write lock), reads ``head``, hands out ``head + 1, head + 2, ...`` as journal ids and
writes the new head back before committing. Two transactions on one namespace therefore run one
after the other, and a transaction that fails rolls its journal ids back with everything else.

How deduplication stays safe against garbage collection: the ``blocks`` row of a chunk is the
lock that the uploader, the committer and the collector all take (committers in share mode).
The collector removes a chunk's row only while holding it and after seeing, in a fresh
statement, that no revision references it, and leaves a tombstone in the same transaction; it
removes the bytes later, in a transaction that holds the tombstone (see `collect_garbage`). An
uploader that finds the row gone deletes the tombstone, then re-checks that the bytes are still
in the block store and writes them again if not.
"""

from __future__ import annotations

import base64
import builtins
import functools
import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from sqlalchemy import BigInteger, bindparam, delete, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from cubby.blockstore.base import BlockStore
from cubby.core import delta, paths
from cubby.core.hashing import content_hash
from cubby.errors import (
    BadRequest,
    Conflict,
    CubbyError,
    NamespaceMoved,
    NotFound,
    SizeMismatch,
    Unauthorized,
)
from cubby.metadata import migrate
from cubby.metadata.engine import Database
from cubby.metadata.possession import Challenges, Checked, ChunkReader, Claim, check_claims
from cubby.metadata.schema import (
    blocks,
    chunk_tombstones,
    file_revs,
    journal,
    members,
    namespaces,
    nodes,
    ns_chunks,
    settings,
    tokens,
    users,
)
from cubby.model import (
    FILE_MODES,
    ChunkRef,
    CommitRequest,
    CommitResult,
    Entry,
    GcStats,
    JournalEntry,
    Listing,
    NeededChunk,
    Principal,
    Revision,
    Role,
    User,
)

ROOT_NODE = 0
MAX_CHUNK_BYTES = 16 * 1024 * 1024
"""Sanity bound on a declared chunk size; real chunks are at most 4 MiB (core.chunking)."""
MAX_CHUNKS_PER_FILE = 1_000_000
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def content_hash_of(chunks: Sequence[ChunkRef]) -> str:
    return content_hash(c.hash for c in chunks)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _key_range(prefix_key: str) -> tuple[str, str]:
    """Bounds (exclusive) of the keys strictly below folder ``prefix_key``: '/' + 1 is '0'."""
    base = "" if prefix_key == paths.ROOT else prefix_key
    return base + "/", base + "0"


def _entry(row: Row[Any]) -> Entry:
    m = row._mapping
    return Entry(
        ns_id=m["ns_id"],
        node_id=m["node_id"],
        parent_id=m["parent_id"],
        path=m["path"],
        name=m["name"],
        kind=m["kind"],
        rev=m["rev"],
        size=m["size"] or 0,
        content_hash=m["content_hash"],
        mtime=m["mtime"],
        deleted=bool(m["deleted"]),
        target_ns=m["target_ns"],
        mode=m.get("mode"),
    )


def _root_entry(ns_id: int, head: int) -> Entry:
    return Entry(ns_id=ns_id, node_id=ROOT_NODE, parent_id=None, path="/", name="", kind="folder", rev=head)


_NODE_COLUMNS = (
    "parent_id", "name", "path", "path_key", "kind", "rev", "content_rev", "size", "content_hash", "mtime",
    "deleted", "deleted_key", "target_ns", "pending", "mode",
)


@dataclass
class _Txn:
    """One write transaction on one namespace.

    It hands out journal ids and node ids in order, and buffers the rows it writes (nodes,
    revisions, journal entries, chunk references) so that a batch of a thousand commits costs a
    handful of multi-row statements instead of thousands of single ones. Lookups through `live`
    see the buffered rows; `flush` must run before any statement that reads the tables directly.
    """

    conn: Connection
    ns_id: int
    head: int
    next_node: int
    user_id: int | None
    now: float = field(default_factory=time.time)
    cache: dict[str, Any] = field(default_factory=dict)
    new_nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    changed_nodes: dict[int, dict[str, Any]] = field(default_factory=dict)
    rev_rows: list[dict[str, Any]] = field(default_factory=list)
    journal_rows: list[dict[str, Any]] = field(default_factory=list)
    ref_counts: dict[str, int] = field(default_factory=dict)
    chunk_sizes: dict[str, int] | None = None
    usable: set[str] | None = None
    checked: set[str] = field(default_factory=set)
    readable: tuple[int, ...] = ()
    """Other namespaces the caller can read: their chunks need no proof of possession here."""
    share_origin: Any = None
    """(cut, owner's root namespace) of a shared namespace, once `_same_as_before_share` read it."""

    def next_jid(self) -> int:
        self.head += 1
        return self.head

    def new_node_id(self) -> int:
        nid = self.next_node
        self.next_node += 1
        return nid

    # -- lookups that see this transaction's own writes ---------------------------------------
    def live(self, path_key: str) -> Any:
        if path_key not in self.cache:
            self.cache[path_key] = self.conn.execute(
                select(nodes).where(nodes.c.ns_id == self.ns_id, nodes.c.path_key == path_key)
            ).first()
        return self.cache[path_key]

    def prefetch(self, keys: Iterable[str]) -> None:
        """Load the live nodes at many keys with a few IN queries (missing keys cache as None)."""
        todo = sorted({k for k in keys if k not in self.cache})
        for i in range(0, len(todo), 500):
            part = todo[i : i + 500]
            for k in part:
                self.cache[k] = None
            for row in self.conn.execute(
                select(nodes).where(nodes.c.ns_id == self.ns_id, nodes.c.path_key.in_(part))
            ):
                self.cache[row.path_key] = row

    def forget(self) -> None:
        self.cache.clear()

    # -- buffered writes ------------------------------------------------------------------------
    def put_node(self, node_id: int, values: dict[str, Any], *, new: bool) -> None:
        full = {"ns_id": self.ns_id, "node_id": node_id, **values}
        if new or node_id in self.new_nodes:
            self.new_nodes[node_id] = full
        else:
            self.changed_nodes[node_id] = full
        if values.get("path_key") is not None:
            self.cache[values["path_key"]] = SimpleNamespace(**full)

    def add_refs(self, hashes: Iterable[str]) -> None:
        for h in set(hashes):
            self.ref_counts[h] = self.ref_counts.get(h, 0) + 1

    def journal(
        self,
        op: str,
        *,
        node_id: int,
        parent_id: int,
        kind: str,
        path: str,
        rev: int,
        size: int = 0,
        content_hash: str | None = None,
        mtime: float | None = None,
        old_path: str | None = None,
        old_parent_id: int | None = None,
        mode: int | None = None,
    ) -> None:
        self.journal_rows.append(
            {
                "ns_id": self.ns_id, "jid": rev, "op": op, "node_id": node_id, "parent_id": parent_id, "kind": kind,
                "name": paths.split(path)[1], "path": path, "path_key": paths.key(path), "rev": rev, "size": size,
                "content_hash": content_hash, "mtime": mtime, "old_path": old_path, "old_parent_id": old_parent_id,
                "user_id": self.user_id, "created_at": self.now, "mode": mode,
            }
        )

    def flush(self, insert_ignore: Any) -> None:
        conn = self.conn
        if self.changed_nodes:
            stmt = (
                update(nodes)
                .where(nodes.c.ns_id == bindparam("b_ns"), nodes.c.node_id == bindparam("b_node"))
                .values({c: bindparam(f"v_{c}") for c in _NODE_COLUMNS})
            )
            conn.execute(
                stmt,
                [
                    {"b_ns": v["ns_id"], "b_node": v["node_id"], **{f"v_{c}": v.get(c) for c in _NODE_COLUMNS}}
                    for v in self.changed_nodes.values()
                ],
            )
        if self.new_nodes:
            conn.execute(insert(nodes), [{c: v.get(c) for c in ("ns_id", "node_id", *_NODE_COLUMNS)} for v in self.new_nodes.values()])
        if self.rev_rows:
            conn.execute(insert(file_revs), self.rev_rows)
        if self.journal_rows:
            conn.execute(insert(journal), self.journal_rows)
        if self.ref_counts:
            names = sorted(self.ref_counts)
            insert_ignore(conn, ns_chunks, [{"ns_id": self.ns_id, "hash": h, "refs": 0, "touched_at": self.now} for h in names])
            conn.execute(
                update(ns_chunks)
                .where(ns_chunks.c.ns_id == self.ns_id, ns_chunks.c.hash == bindparam("h"))
                .values(refs=ns_chunks.c.refs + bindparam("n", type_=BigInteger), touched_at=self.now),
                [{"h": h, "n": self.ref_counts[h]} for h in names],
            )
        self.new_nodes.clear()
        self.changed_nodes.clear()
        self.rev_rows.clear()
        self.journal_rows.clear()
        self.ref_counts.clear()

    def finish(self, insert_ignore: Any) -> None:
        self.flush(insert_ignore)
        self.conn.execute(
            update(namespaces)
            .where(namespaces.c.ns_id == self.ns_id)
            .values(head=self.head, next_node=self.next_node)
        )


class SqlMetadataStore:
    """The metadata store (see `cubby.metadata.base.MetadataStore` for the contract)."""

    def __init__(self, db: Database) -> None:
        from cubby.metadata.moves import CrossMoves
        from cubby.metadata.shares import Sharing

        self.db = db
        self.challenges = Challenges(self._load_secret())
        """Possession nonces under the server's secret (see metadata/possession.py)."""
        self.sharing = Sharing(self)
        """Shared folders: share, accept, remove, leave, unshare, list (see metadata/shares.py)."""
        self.moves = CrossMoves(self)
        """Moves between namespaces, with intents and recovery (see metadata/moves.py)."""
        self._accounts: Any = None

    @property
    def accounts(self) -> Any:
        """Passwords and web sessions (`cubby.metadata.accounts.Accounts`), made on first use:
        argon2 is loaded only by processes that log people in."""
        if self._accounts is None:
            from cubby.metadata.accounts import Accounts

            self._accounts = Accounts(self.db, self.principal_of)
        return self._accounts

    # ======================================================================================
    # plumbing
    # ======================================================================================
    def close(self) -> None:
        self.db.dispose()

    def _load_secret(self) -> bytes:
        def run(conn: Connection) -> str:
            row = conn.execute(select(settings.c.value).where(settings.c.key == "challenge_secret")).first()
            if row:
                return str(row[0])
            value = secrets.token_hex(32)
            try:
                with conn.begin_nested():
                    conn.execute(insert(settings).values(key="challenge_secret", value=value))
            except IntegrityError:
                row = conn.execute(select(settings.c.value).where(settings.c.key == "challenge_secret")).one()
                return str(row[0])
            return value

        return bytes.fromhex(self.db.write(run))

    def _lock_ns(self, conn: Connection, ns_id: int) -> tuple[int, int]:
        q = select(namespaces.c.head, namespaces.c.next_node).where(namespaces.c.ns_id == ns_id)
        if not self.db.is_sqlite:
            q = q.with_for_update()
        row = conn.execute(q).first()
        if row is None:
            raise NotFound(f"namespace {ns_id} does not exist")
        return int(row[0]), int(row[1])

    def _write_ns(self, ns_id: int, user_id: int | None, fn: Any, readable: Iterable[int] = ()) -> Any:
        """Run ``fn(txn)`` in one transaction holding the namespace's lock."""
        others = tuple(sorted({int(n) for n in readable} - {ns_id}))

        def run(conn: Connection) -> Any:
            head, next_node = self._lock_ns(conn, ns_id)
            tx = _Txn(conn, ns_id, head, next_node, user_id, readable=others)
            result = fn(tx)
            tx.finish(self._insert_ignore)
            return result

        return self.db.write(run)

    def _insert_ignore(self, conn: Connection, table: Any, rows: list[dict[str, Any]]) -> None:
        """INSERT rows, skipping any whose primary key exists (see `Database.insert_ignore`)."""
        self.db.insert_ignore(conn, table, rows)

    # ======================================================================================
    # accounts
    # ======================================================================================
    def create_user(self, name: str) -> tuple[User, str]:
        if not isinstance(name, str) or not USER_RE.match(name):
            raise BadRequest(
                f"invalid user name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )

        def run(conn: Connection) -> User:
            if conn.execute(select(users.c.id).where(users.c.name_key == name.lower())).first():
                raise Conflict(f"a user named {name!r} already exists")
            now = time.time()
            uid = conn.execute(
                insert(users).values(name=name, name_key=name.lower(), created_at=now)
            ).inserted_primary_key[0]  # type: ignore[index]
            ns = conn.execute(
                insert(namespaces).values(kind="root", owner_id=uid, head=0, next_node=1, created_at=now)
            ).inserted_primary_key[0]  # type: ignore[index]
            conn.execute(update(users).where(users.c.id == uid).values(root_ns=ns))
            return User(id=int(uid), name=name, root_ns=int(ns))

        try:
            user = self.db.write(run)
        except IntegrityError as exc:
            raise Conflict(f"a user named {name!r} already exists") from exc
        _, token = self.create_token(user.id, "initial")
        return user, token

    def get_user(self, name: str) -> User:
        row = self.db.read(
            lambda c: c.execute(select(users).where(users.c.name_key == str(name).lower())).first()
        )
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return User(id=row.id, name=row.name, root_ns=row.root_ns)

    def create_token(self, user_id: int, label: str = "") -> tuple[int, str]:
        token = "cby_" + secrets.token_urlsafe(32)

        def run(conn: Connection) -> int:
            if not conn.execute(select(users.c.id).where(users.c.id == user_id)).first():
                raise NotFound(f"no user with id {user_id}")
            return int(
                conn.execute(
                    insert(tokens).values(
                        user_id=user_id, token_hash=token_hash(token), label=label[:200], created_at=time.time()
                    )
                ).inserted_primary_key[0]  # type: ignore[index]
            )

        return self.db.write(run), token

    def list_tokens(self, user_id: int) -> list[dict[str, object]]:
        rows = self.db.read(
            lambda c: c.execute(
                select(tokens.c.id, tokens.c.label, tokens.c.created_at, tokens.c.revoked_at)
                .where(tokens.c.user_id == user_id)
                .order_by(tokens.c.id)
            ).all()
        )
        return [dict(r._mapping) for r in rows]

    def revoke_token(self, user_id: int, token_id: int) -> None:
        def run(conn: Connection) -> None:
            res = conn.execute(
                update(tokens)
                .where(tokens.c.id == token_id, tokens.c.user_id == user_id, tokens.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            if res.rowcount == 0:
                raise NotFound(f"no active token {token_id} for this user")

        self.db.write(run)

    def authenticate(self, token: str, *, fresh: bool = False) -> Principal:
        """The principal of ``token``. (This store always reads afresh; ``fresh`` is for a
        cached store, `cubby.cache.store.CachedStore`.)"""
        uid, name, root_ns, token_id = self.token_owner(token)
        return self.principal_of(uid, name, root_ns, token_id=token_id)

    def token_owner(self, token: str) -> tuple[int, str, int, int]:
        """(user id, name, root namespace, token id) of a valid token; `Unauthorized` if it
        is unknown or revoked. (Split from `authenticate` so that a cache can keep the two
        halves under their own keys: see `cubby.cache.store`.)"""
        if not token:
            raise Unauthorized("missing bearer token: pass 'Authorization: Bearer TOKEN' (cubby user add prints one)")

        def run(conn: Connection) -> Any:
            return conn.execute(
                select(tokens.c.id, tokens.c.revoked_at, users.c.id.label("uid"), users.c.name, users.c.root_ns)
                .join(users, users.c.id == tokens.c.user_id)
                .where(tokens.c.token_hash == token_hash(token))
            ).first()

        row = self.db.read(run)
        if row is None:
            raise Unauthorized("unknown token: check CUBBY_TOKEN, or create one with 'cubby user add'")
        if row.revoked_at is not None:
            raise Unauthorized("this token was revoked: create a new one with 'cubby token create'")
        return int(row.uid), str(row.name), int(row.root_ns), int(row.id)

    def token_hash_of(self, token_id: int) -> str | None:
        """The stored hash of token ``token_id`` (None if there is none): the cache's key."""
        row = self.db.read(lambda c: c.execute(select(tokens.c.token_hash).where(tokens.c.id == token_id)).first())
        return None if row is None else str(row[0])

    def principal_of(self, user_id: int, name: str, root_ns: int, *, token_id: int = 0) -> Principal:
        """The principal of a user whose credential was checked elsewhere (a token here, a
        web session in `cubby.metadata.accounts`), with memberships read afresh."""
        roles, mounts = self.memberships(user_id, root_ns)
        return Principal(
            user_id=user_id, name=name, root_ns=root_ns, token_id=token_id, namespaces=roles, mounts=mounts,
        )

    def user_can_read(self, user_id: int, ns_id: int) -> bool:
        """Whether ``user_id`` reaches ``ns_id`` now: their root, or an active membership.
        Links ask this of their creator on every download, so a removed member's links die."""

        def run(conn: Connection) -> bool:
            root = conn.execute(select(users.c.root_ns).where(users.c.id == user_id)).first()
            if root is not None and int(root[0]) == ns_id:
                return True
            return conn.execute(
                select(members.c.ns_id).where(
                    members.c.ns_id == ns_id, members.c.user_id == user_id, members.c.state == "active"
                )
            ).first() is not None

        return self.db.read(run)

    def memberships(self, user_id: int, root_ns: int) -> tuple[dict[int, Role], dict[str, int]]:
        """Roles by namespace and mounts of ``user_id`` (see `_memberships`), in one read."""
        return self.db.read(lambda c: self._memberships(c, user_id, root_ns))

    def _memberships(self, conn: Connection, user_id: int, root_ns: int) -> tuple[dict[int, Role], dict[str, int]]:
        """The namespaces a user reaches, with roles, and where each shared one is mounted.

        A shared namespace counts only while the membership is active *and* its mount node is
        live in the user's root: the membership row is the truth about access, the mount node
        about where it appears. Read on every request, so a change applies at the next one."""
        active = {
            int(r.ns_id): r.role
            for r in conn.execute(
                select(members.c.ns_id, members.c.role).where(members.c.user_id == user_id, members.c.state == "active")
            )
        }
        roles: dict[int, Role] = {root_ns: "owner"}
        mounts: dict[str, int] = {}
        if active:
            for m in conn.execute(
                select(nodes.c.path, nodes.c.target_ns).where(
                    nodes.c.ns_id == root_ns, nodes.c.target_ns.is_not(None), nodes.c.path_key.is_not(None)
                )
            ):
                ns = int(m.target_ns)
                if ns in active:
                    mounts[str(m.path)] = ns
                    roles[ns] = active[ns]
        return roles, mounts

    # ======================================================================================
    # reading files
    # ======================================================================================
    def head(self, ns_id: int) -> int:
        row = self.db.read(
            lambda c: c.execute(select(namespaces.c.head).where(namespaces.c.ns_id == ns_id)).first()
        )
        if row is None:
            raise NotFound(f"namespace {ns_id} does not exist")
        return int(row[0])

    def _live(self, conn: Connection, ns_id: int, path: str) -> Row[Any] | None:
        return conn.execute(
            select(nodes).where(nodes.c.ns_id == ns_id, nodes.c.path_key == paths.key(path))
        ).first()

    def _missing(self, conn: Connection, ns_id: int, path: str) -> CubbyError:
        """The error for a path with no live node: `NamespaceMoved` when an ancestor became a
        shared folder after the caller resolved the path (a read that raced the share), else
        `NotFound`."""
        for a in paths.ancestors(path):
            row = self._live(conn, ns_id, a)
            if row is None or row.kind == "file":
                break
            if row.kind == "mount":
                return NamespaceMoved(f"{row.path} became a shared folder; resolve {path} again", path=row.path)
        return NotFound(f"{path} does not exist")

    def stat(self, ns_id: int, path: str) -> Entry:
        path = paths.normalize(path)
        if path == paths.ROOT:
            return _root_entry(ns_id, self.head(ns_id))

        def run(conn: Connection) -> Entry:
            row = self._live(conn, ns_id, path)
            if row is None:
                raise self._missing(conn, ns_id, path)
            return _entry(row)

        return self.db.read(run)

    def list(
        self, ns_id: int, path: str, recursive: bool = False, cursor: str | None = None, limit: int = 1000
    ) -> Listing:
        path = paths.normalize(path)
        limit = max(1, min(int(limit), 10_000))
        after: str | None = None
        if cursor:
            try:
                after = base64.b64decode(cursor.encode("ascii"), altchars=b"-_", validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest("invalid listing cursor: pass back the cursor of the previous page") from exc

        def run(conn: Connection) -> list[Row[Any]]:
            if path == paths.ROOT:
                folder_id = ROOT_NODE
                if not conn.execute(select(namespaces.c.ns_id).where(namespaces.c.ns_id == ns_id)).first():
                    raise NotFound(f"namespace {ns_id} does not exist")
            else:
                folder = self._live(conn, ns_id, path)
                if folder is None:
                    raise NotFound(f"{path} does not exist")
                if folder.kind == "mount":
                    raise NamespaceMoved(f"{path} is a shared folder now; resolve it again", path=path)
                if folder.kind != "folder":
                    raise Conflict(f"{path} is a file, not a folder", code="not_a_folder")
                folder_id = folder.node_id
            q = select(nodes).where(nodes.c.ns_id == ns_id, nodes.c.path_key.is_not(None))
            if recursive:
                lo, hi = _key_range(paths.key(path))
                if path != paths.ROOT:
                    q = q.where(nodes.c.path_key > lo, nodes.c.path_key < hi)
            else:
                q = q.where(nodes.c.parent_id == folder_id)
            if after is not None:
                q = q.where(nodes.c.path_key > after)
            return list(conn.execute(q.order_by(nodes.c.path_key).limit(limit + 1)).all())

        rows = self.db.read(run)
        has_more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = None
        if rows:
            last_key = paths.key(rows[-1].path)
            next_cursor = base64.urlsafe_b64encode(last_key.encode("utf-8")).decode("ascii")
        elif cursor:
            next_cursor = cursor
        return Listing(entries=[_entry(r) for r in rows], cursor=next_cursor, has_more=has_more)

    def _node_for_history(self, conn: Connection, ns_id: int, path: str) -> int:
        row = self._live(conn, ns_id, path)
        if row is not None:
            if row.kind != "file":
                raise Conflict(f"{path} is a folder; only files have history", code="not_a_file")
            return int(row.node_id)
        gone = conn.execute(
            select(nodes.c.node_id)
            .where(nodes.c.ns_id == ns_id, nodes.c.deleted_key == paths.key(path), nodes.c.kind == "file")
            .order_by(nodes.c.rev.desc())
            .limit(1)
        ).first()
        if gone is not None:
            return int(gone[0])
        last = conn.execute(
            select(journal.c.node_id)
            .where(journal.c.ns_id == ns_id, journal.c.path_key == paths.key(path), journal.c.kind == "file")
            .order_by(journal.c.jid.desc())
            .limit(1)
        ).first()
        if last is None:
            raise NotFound(f"{path} has no history")
        return int(last[0])

    def history(self, ns_id: int, path: str, limit: int = 100) -> builtins.list[Revision]:
        path = paths.normalize(path)

        def run(conn: Connection) -> list[Revision]:
            node_id = self._node_for_history(conn, ns_id, path)
            node = conn.execute(
                select(nodes.c.deleted).where(nodes.c.ns_id == ns_id, nodes.c.node_id == node_id)
            ).first()
            rows = conn.execute(
                select(file_revs)
                .where(file_revs.c.ns_id == ns_id, file_revs.c.node_id == node_id)
                .order_by(file_revs.c.rev.desc())
                .limit(max(1, min(int(limit), 10_000)))
            ).all()
            gone = bool(node and node.deleted)
            return [
                Revision(
                    ns_id=ns_id,
                    node_id=node_id,
                    rev=r.rev,
                    path=r.path,
                    size=r.size,
                    content_hash=r.content_hash,
                    mtime=r.mtime,
                    created_at=r.created_at,
                    deleted=gone and i == 0,
                )
                for i, r in enumerate(rows)
            ]

        return self.db.read(run)

    def blocklist(self, ns_id: int, path: str, rev: int | None = None) -> tuple[Entry, builtins.list[ChunkRef]]:
        return self.db.read(lambda conn: self._blocklist(conn, ns_id, paths.normalize(path), rev))

    def blocklists(
        self, ns_id: int, paths_: Sequence[str]
    ) -> builtins.list[tuple[Entry, builtins.list[ChunkRef]] | CubbyError]:
        """The current chunk lists of many files in one read (a download of many small files
        asks for a thousand at a time); each path gets its own outcome."""

        def run(conn: Connection) -> list[tuple[Entry, list[ChunkRef]] | CubbyError]:
            out: list[tuple[Entry, list[ChunkRef]] | CubbyError] = []
            for raw in paths_:
                try:
                    out.append(self._blocklist(conn, ns_id, paths.normalize(raw), None))
                except CubbyError as exc:
                    out.append(exc)
            return out

        return self.db.read(run)

    def _blocklist(self, conn: Connection, ns_id: int, path: str, rev: int | None) -> tuple[Entry, builtins.list[ChunkRef]]:
        node = self._live(conn, ns_id, path)
        if rev is None:
            if node is None:
                raise self._missing(conn, ns_id, path)
            if node.kind != "file":
                raise Conflict(f"{path} is a folder, not a file", code="not_a_file")
            want = node.content_rev
            node_id = node.node_id
        else:
            node_id = self._node_for_history(conn, ns_id, path)
            want = rev
        fr = conn.execute(
            select(file_revs).where(
                file_revs.c.ns_id == ns_id, file_revs.c.node_id == node_id, file_revs.c.rev == want
            )
        ).first()
        if fr is None:
            raise NotFound(f"{path} has no revision {rev}")
        entry = (
            _entry(node)
            if node is not None and rev is None
            else Entry(
                ns_id=ns_id,
                node_id=node_id,
                parent_id=None,
                path=fr.path,
                name=paths.split(fr.path)[1],
                kind="file",
                rev=fr.rev,
                size=fr.size,
                content_hash=fr.content_hash,
                mtime=fr.mtime,
                mode=fr.mode,
            )
        )
        return entry, [ChunkRef(h, s) for h, s in json.loads(fr.blocklist)]

    def journal(self, ns_id: int, after: int, limit: int = 1000) -> builtins.list[JournalEntry]:
        limit = max(1, min(int(limit), 10_000))
        rows = self.db.read(
            lambda c: c.execute(
                select(journal)
                .where(journal.c.ns_id == ns_id, journal.c.jid > int(after))
                .order_by(journal.c.jid)
                .limit(limit)
            ).all()
        )
        return [
            JournalEntry(
                ns_id=r.ns_id,
                jid=r.jid,
                op=r.op,
                node_id=r.node_id,
                parent_id=r.parent_id,
                kind=r.kind,
                path=r.path,
                name=r.name,
                rev=r.rev,
                size=r.size,
                content_hash=r.content_hash,
                mtime=r.mtime,
                old_path=r.old_path,
                old_parent_id=r.old_parent_id,
                user_id=r.user_id,
                created_at=r.created_at,
                mode=r.mode,
            )
            for r in rows
        ]

    # ======================================================================================
    # writing files
    # ======================================================================================
    def _same_as_before_share(self, tx: _Txn, row: Any, expected_rev: int) -> bool:
        """Whether ``expected_rev`` is the revision ``row`` had in its owner's root namespace
        when the share copied it, and it has not changed since.

        Sharing renumbers what it copies (a revision is a journal id of its namespace), so a
        client that read a file before the share, or a request that raced the share and was
        resolved again, names the old revision. It is the same version, so it must not be a
        conflict; any change since the copy has a revision above the cut and still is one."""
        if tx.share_origin is None:
            tx.share_origin = tx.conn.execute(
                select(namespaces.c.cut, users.c.root_ns)
                .join(users, users.c.id == namespaces.c.owner_id)
                .where(namespaces.c.ns_id == tx.ns_id)
            ).first() or False
        ns = tx.share_origin
        if not ns or ns.cut is None or int(row.rev) > int(ns.cut):
            return False
        old = tx.conn.execute(
            select(nodes.c.rev).where(nodes.c.ns_id == int(ns.root_ns), nodes.c.node_id == int(row.node_id))
        ).first()
        return old is not None and int(old.rev) == int(expected_rev)

    def _guard_mounts(self, tx: _Txn, path: str) -> None:
        """Refuse, retryably, a write whose path lies below a mount point of this namespace.

        Such a write resolved its path before the folder became a shared folder (its own
        namespace) and reached this namespace after the share committed: applying it here would
        put it where no one sees it, so it must be resolved again and land in the new namespace.
        Every writer of a namespace holds that namespace's lock, so this check and the share
        are ordered: each write lands on exactly one side of the cut."""
        for a in paths.ancestors(path):
            row = tx.live(paths.key(a))
            if row is None or row.kind == "file":
                return  # nothing deeper exists, or the write fails on its own
            if row.kind == "mount":
                raise NamespaceMoved(f"{row.path} became a shared folder; resolve {path} again and retry", path=row.path)

    def _ensure_folder(self, tx: _Txn, path: str) -> tuple[int, str]:
        """Node id and display path of the folder at ``path``, creating it and its missing
        parents. A new node's display path is its parent's display path plus its own name, so
        that the spelling of every ancestor is the one it was created with."""
        if path == paths.ROOT:
            return ROOT_NODE, paths.ROOT
        row = tx.live(paths.key(path))
        if row is not None:
            if row.kind == "mount":
                raise NamespaceMoved(f"{row.path} became a shared folder; resolve {path} again and retry", path=row.path)
            if row.kind != "folder":
                raise Conflict(f"{row.path} is a file, so it cannot hold {path}", code="not_a_folder")
            return int(row.node_id), str(row.path)
        parent, name = paths.split(path)
        parent_id, parent_path = self._ensure_folder(tx, parent)
        path = paths.join(parent_path, name)
        node_id = tx.new_node_id()
        jid = tx.next_jid()
        values = {
            "parent_id": parent_id,
            "name": paths.split(path)[1],
            "path": path,
            "path_key": paths.key(path),
            "kind": "folder",
            "rev": jid,
            "content_rev": None,
            "size": 0,
            "content_hash": None,
            "mtime": None,
            "deleted": False,
            "deleted_key": None,
        }
        tx.put_node(node_id, values, new=True)
        tx.journal("mkdir", node_id=node_id, parent_id=parent_id, kind="folder", path=path, rev=jid)
        return node_id, path

    def _validate_commit(self, req: CommitRequest) -> tuple[str, tuple[ChunkRef, ...]]:
        path = paths.normalize(req.path)
        if path == paths.ROOT:
            raise BadRequest("cannot commit a file at the root itself; give a file name")
        if not isinstance(req.size, int) or req.size < 0:
            raise BadRequest("size must be a non-negative integer")
        if len(req.chunks) > MAX_CHUNKS_PER_FILE:
            raise BadRequest(f"a file may have at most {MAX_CHUNKS_PER_FILE} chunks")
        total = 0
        for c in req.chunks:
            if not isinstance(c.hash, str) or not HASH_RE.match(c.hash):
                raise BadRequest(f"chunk name {str(c.hash)[:80]!r} is not a lowercase hex SHA-256")
            if not isinstance(c.size, int) or not 0 < c.size <= MAX_CHUNK_BYTES:
                raise BadRequest(f"chunk {c.hash} has an impossible size {c.size!r}")
            total += c.size
        if total != req.size:
            raise SizeMismatch(
                f"size {req.size} disagrees with the chunks, which add up to {total} bytes", path=path
            )
        if req.expected_rev is not None and (not isinstance(req.expected_rev, int) or req.expected_rev < 0):
            raise BadRequest("expected_rev must be a revision number or null")
        if req.mode is not None and req.mode not in FILE_MODES:
            raise BadRequest(
                f"mode {req.mode!r} is not one of {', '.join(oct(m) for m in FILE_MODES)} (regular, executable, link)",
                code="bad_mode",
            )
        return path, tuple(req.chunks)

    def _load_chunks(self, tx: _Txn, hashes: Iterable[str]) -> None:
        """Learn which of ``hashes`` this namespace may use and how big each stored chunk is,
        locking their ``blocks`` rows in share mode so that garbage collection cannot take them
        before this transaction commits."""
        if tx.usable is None or tx.chunk_sizes is None:
            tx.usable, tx.chunk_sizes = set(), {}
        wanted = sorted({h for h in hashes if h not in tx.checked})
        tx.checked.update(wanted)
        for i in range(0, len(wanted), 500):
            part = wanted[i : i + 500]
            tx.usable.update(
                r[0]
                for r in tx.conn.execute(
                    select(ns_chunks.c.hash)
                    .where(ns_chunks.c.ns_id.in_((tx.ns_id, *tx.readable)), ns_chunks.c.hash.in_(part))
                    .distinct()
                )
            )
            q = select(blocks.c.hash, blocks.c.size).where(blocks.c.hash.in_(part))
            if not self.db.is_sqlite:
                q = q.with_for_update(read=True)
            tx.chunk_sizes.update((r[0], int(r[1])) for r in tx.conn.execute(q))

    def _unavailable(self, tx: _Txn, chunks: tuple[ChunkRef, ...]) -> builtins.list[str]:
        """Chunks this namespace may not use yet, in file order (each once)."""
        self._load_chunks(tx, (c.hash for c in chunks))
        assert tx.usable is not None and tx.chunk_sizes is not None
        sizes, usable = tx.chunk_sizes, tx.usable
        for c in chunks:
            if c.hash in usable and c.hash in sizes and sizes[c.hash] != c.size:
                raise SizeMismatch(f"chunk {c.hash} is {sizes[c.hash]} bytes, not {c.size}")
        missing: list[str] = []
        seen: set[str] = set()
        for c in chunks:
            if c.hash not in seen and not (c.hash in usable and c.hash in sizes):
                missing.append(c.hash)
            seen.add(c.hash)
        return missing

    def _write_file(
        self, tx: _Txn, path: str, chunks: tuple[ChunkRef, ...], size: int, expected_rev: int | None, mtime: float | None,
        *, check_expected: bool = True, revive: int | None = None, guarded: bool = False, mode: int | None = None,
    ) -> Entry:
        """Write a file revision at ``path``; ``guarded``: the caller has just run
        `_guard_mounts` for ``path`` in this transaction, so it is not run again."""
        key = paths.key(path)
        if not guarded:
            self._guard_mounts(tx, path)
        existing = tx.live(key)
        if existing is not None and existing.kind != "file":
            raise Conflict(f"{existing.path} is a folder; cannot write a file there", code="is_a_folder")
        if check_expected:
            current = existing.rev if existing is not None else None
            if current != expected_rev and not (
                existing is not None and expected_rev is not None and self._same_as_before_share(tx, existing, expected_rev)
            ):
                if existing is None:
                    raise Conflict(f"{path} was deleted or moved since revision {expected_rev}", current_rev=None)
                if expected_rev is None:
                    raise Conflict(f"{existing.path} already exists (revision {current})", current_rev=current)
                raise Conflict(
                    f"{existing.path} changed: it is at revision {current}, not {expected_rev}", current_rev=current
                )
        parent, name = paths.split(path)
        parent_id, parent_path = self._ensure_folder(tx, parent)
        path = paths.join(parent_path, name)
        jid = tx.next_jid()
        chash = content_hash_of(chunks)
        if existing is not None:
            node_id = int(existing.node_id)
            path = existing.path  # a commit never renames: the first spelling of a name stays
            op = "edit"
        elif revive is not None:
            node_id = revive  # restoring a deleted file brings back the same node, history and all
            op = "add"
        else:
            node_id = tx.new_node_id()
            op = "add"
        tx.rev_rows.append(
            {
                "ns_id": tx.ns_id,
                "node_id": node_id,
                "rev": jid,
                "path": path,
                "size": size,
                "content_hash": chash,
                "blocklist": json.dumps([[c.hash, c.size] for c in chunks], separators=(",", ":")),
                "mtime": mtime,
                "user_id": tx.user_id,
                "created_at": tx.now,
                "mode": mode,
            }
        )
        values = {
            "parent_id": parent_id,
            "name": paths.split(path)[1],
            "path": path,
            "path_key": key,
            "kind": "file",
            "rev": jid,
            "content_rev": jid,
            "size": size,
            "content_hash": chash,
            "mtime": mtime,
            "deleted": False,
            "deleted_key": None,
            "mode": mode,
        }
        tx.put_node(node_id, values, new=existing is None and revive is None)
        tx.add_refs(c.hash for c in chunks)
        tx.journal(
            op, node_id=node_id, parent_id=parent_id, kind="file", path=path, rev=jid, size=size,
            content_hash=chash, mtime=mtime, mode=mode,
        )
        return Entry(
            ns_id=tx.ns_id, node_id=node_id, parent_id=parent_id, path=path, name=paths.split(path)[1],
            kind="file", rev=jid, size=size, content_hash=chash, mtime=mtime, mode=mode,
        )

    def _commit_valid(self, tx: _Txn, req: CommitRequest, path: str, chunks: tuple[ChunkRef, ...]) -> CommitResult:
        """Commit ``req`` in ``tx``, once `_validate_commit` has passed it (``path`` and
        ``chunks`` are what it returned). Validation is pure and runs once per request, before
        the namespace lock is taken, so the lock is held only for the work that needs it."""
        self._guard_mounts(tx, path)
        missing = self._unavailable(tx, chunks)
        if missing:
            uid = tx.user_id or 0
            sizes = {c.hash: c.size for c in chunks}  # the size is bound into the nonce
            bases = self._bases(tx, path, chunks, missing)
            return CommitResult(
                needed=tuple(
                    NeededChunk(h, self.challenge(uid, tx.ns_id, h, sizes[h]), bases.get(h, ())) for h in missing
                )
            )
        return CommitResult(
            entry=self._write_file(tx, path, chunks, req.size, req.expected_rev, req.mtime, guarded=True, mode=req.mode)
        )

    def _bases(
        self, tx: _Txn, path: str, chunks: tuple[ChunkRef, ...], missing: Sequence[str]
    ) -> dict[str, tuple[str, ...]]:
        """For the missing chunks of an edit, the old chunks at the same place in the file's
        current version (`delta.pick_bases`): named in the answer, so that the client needs no
        extra request (nor the whole old chunk list) to send them as patches."""
        existing = tx.live(paths.key(path))
        if existing is None or existing.kind != "file" or existing.content_rev is None:
            return {}
        row = tx.conn.execute(
            select(file_revs.c.blocklist).where(
                file_revs.c.ns_id == tx.ns_id, file_revs.c.node_id == existing.node_id, file_revs.c.rev == existing.content_rev
            )
        ).first()
        if row is None:
            return {}
        wanted = set(missing)
        new = [c for c in delta.offsets([(c.hash, c.size) for c in chunks]) if c[0] in wanted]
        return delta.pick_bases(new, delta.offsets([(h, s) for h, s in json.loads(row[0])]))

    def commit(self, user_id: int, ns_id: int, req: CommitRequest, readable: Iterable[int] = ()) -> CommitResult:
        path, chunks = self._validate_commit(req)
        return self._write_ns(ns_id, user_id, lambda tx: self._commit_valid(tx, req, path, chunks), readable)

    def commit_many(
        self, user_id: int, ns_id: int, reqs: Sequence[CommitRequest], readable: Iterable[int] = ()
    ) -> builtins.list[CommitResult | CubbyError]:
        # Validation needs no transaction: each request is checked once, before the lock.
        valid: list[tuple[str, tuple[ChunkRef, ...]] | CubbyError] = []
        for req in reqs:
            try:
                valid.append(self._validate_commit(req))
            except CubbyError as exc:
                valid.append(exc)

        def run(tx: _Txn) -> list[CommitResult | CubbyError]:
            out: list[CommitResult | CubbyError] = []
            keys: set[str] = set()
            hashes: set[str] = set()
            for v in valid:
                if isinstance(v, CubbyError):
                    continue
                path, chunks = v
                keys.add(paths.key(path))
                keys.update(paths.key(a) for a in paths.ancestors(path))
                hashes.update(c.hash for c in chunks)
            tx.prefetch(keys)
            self._load_chunks(tx, hashes)
            for req, v in zip(reqs, valid):
                if isinstance(v, CubbyError):
                    out.append(v)
                    continue
                try:
                    out.append(self._commit_valid(tx, req, *v))
                except CubbyError as exc:
                    # Nothing of a refused commit was written: every check precedes every write.
                    out.append(exc)
            return out

        return self._write_ns(ns_id, user_id, run, readable)

    def mkdir(self, user_id: int, ns_id: int, path: str) -> Entry:
        path = paths.normalize(path)
        if path == paths.ROOT:
            return self.stat(ns_id, path)

        def run(tx: _Txn) -> Entry:
            self._guard_mounts(tx, path)
            self._ensure_folder(tx, path)
            tx.flush(self._insert_ignore)
            tx.forget()
            row = tx.live(paths.key(path))
            assert row is not None
            return _entry(row)

        return self._write_ns(ns_id, user_id, run)

    def mkdir_many(self, user_id: int, ns_id: int, paths_: Sequence[str]) -> builtins.list[Entry | CubbyError]:
        """Many folders in one transaction (a first sync of a tree creates thousands); each
        gets its own outcome. A refused folder writes nothing: `_ensure_folder` raises at the
        first existing non-folder ancestor, before it creates anything below it."""
        wanted: list[str | CubbyError] = []
        for raw in paths_:
            try:
                wanted.append(paths.normalize(raw))
            except CubbyError as exc:
                wanted.append(exc)
        keys = {paths.key(a) for w in wanted if isinstance(w, str) for a in (w, *paths.ancestors(w))}

        def run(tx: _Txn) -> list[Entry | CubbyError | str]:
            tx.prefetch(keys)
            made: list[str | CubbyError] = []
            for w in wanted:
                if isinstance(w, CubbyError) or w == paths.ROOT:
                    made.append(w)
                    continue
                try:
                    self._guard_mounts(tx, w)
                    self._ensure_folder(tx, w)
                    made.append(w)
                except CubbyError as exc:
                    made.append(exc)
            tx.flush(self._insert_ignore)
            tx.forget()
            tx.prefetch(paths.key(m) for m in made if isinstance(m, str))
            out: list[Entry | CubbyError | str] = []
            for m in made:
                if isinstance(m, CubbyError):
                    out.append(m)
                    continue
                row = tx.live(paths.key(m)) if m != paths.ROOT else None
                out.append(_entry(row) if row is not None else m)
            return out

        # the root has no row of its own: it is answered as `mkdir` answers it, by a stat
        return [self.stat(ns_id, r) if isinstance(r, str) else r for r in self._write_ns(ns_id, user_id, run)]

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
        """Delete ``path`` (see the Protocol). With ``forget_through``, also forget the deleted
        files' revisions up to that journal id: a shared folder's server passes its cut when
        it retries a delete that raced the share, so that a delete its client issued before
        the share was acknowledged leaves no history a member could open.

        With ``unchanged_since`` (a journal id the caller has read up to), a folder is deleted
        only if nothing below it changed after that id: ``expected_rev`` covers the folder
        node alone, and a sync client deleting a folder must not take with it a file another
        client just added or edited there (the edit wins; the client re-plans)."""
        path = paths.normalize(path)
        if path == paths.ROOT:
            raise BadRequest("the root cannot be deleted")

        def run(tx: _Txn) -> Entry:
            key = paths.key(path)
            self._guard_mounts(tx, path)
            row = tx.live(key)
            if row is None:
                raise NotFound(f"{path} does not exist")
            if expected_rev is not None and row.rev != expected_rev and not self._same_as_before_share(tx, row, expected_rev):
                raise Conflict(f"{row.path} changed: it is at revision {row.rev}, not {expected_rev}", current_rev=row.rev)
            if row.kind == "mount":
                raise Conflict(
                    f"{row.path} is a shared folder: leave it ('cubby share leave') or, as its owner, unshare it",
                    code="is_shared_folder",
                )
            if row.kind == "folder" and unchanged_since is not None:
                lo, hi = _key_range(key)
                newer = tx.conn.execute(
                    select(nodes.c.path)
                    .where(
                        nodes.c.ns_id == tx.ns_id, nodes.c.path_key > lo, nodes.c.path_key < hi,
                        nodes.c.rev > unchanged_since,
                    )
                    .limit(1)
                ).first()
                if newer is not None:
                    raise Conflict(
                        f"{row.path} changed after revision {unchanged_since} ({newer.path}): nothing was deleted",
                        code="folder_changed",
                    )
            jid = tx.next_jid()
            if row.kind == "folder":
                lo, hi = _key_range(key)
                if tx.conn.execute(
                    select(nodes.c.node_id)
                    .where(nodes.c.ns_id == tx.ns_id, nodes.c.target_ns.is_not(None), nodes.c.path_key > lo, nodes.c.path_key < hi)
                    .limit(1)
                ).first():
                    raise Conflict(
                        f"{row.path} holds a shared folder: leave or unshare it first", code="contains_shared_folder"
                    )
                tx.conn.execute(
                    update(nodes)
                    .where(nodes.c.ns_id == tx.ns_id, nodes.c.path_key > lo, nodes.c.path_key < hi)
                    # MySQL applies SET clauses in order: copy the key before clearing it.
                    .ordered_values((nodes.c.deleted_key, nodes.c.path_key), (nodes.c.path_key, None), (nodes.c.deleted, True))
                )
            tx.conn.execute(
                update(nodes)
                .where(nodes.c.ns_id == tx.ns_id, nodes.c.node_id == row.node_id)
                .values(deleted=True, deleted_key=key, path_key=None, rev=jid)
            )
            if forget_through is not None:
                self._forget_revisions(tx, key, row, forget_through)
            tx.journal(
                "delete", node_id=row.node_id, parent_id=row.parent_id, kind=row.kind, path=row.path, rev=jid,
                size=row.size, content_hash=row.content_hash,
            )
            e = _entry(row)
            return Entry(**{**e.to_dict(), "rev": jid, "deleted": True})

        return self._write_ns(ns_id, user_id, run)

    def _forget_revisions(self, tx: _Txn, key: str, row: Any, through: int) -> None:
        """Drop the revisions up to ``through`` of the file ``row`` (or of every file below the
        folder at ``key``, just deleted) with their chunk references."""
        if row.kind == "file":
            ids = [int(row.node_id)]
        else:
            lo, hi = _key_range(key)
            ids = [
                int(r[0])
                for r in tx.conn.execute(
                    select(nodes.c.node_id).where(
                        nodes.c.ns_id == tx.ns_id, nodes.c.kind == "file", nodes.c.deleted_key > lo, nodes.c.deleted_key < hi
                    )
                )
            ]
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            cond = (file_revs.c.ns_id == tx.ns_id, file_revs.c.node_id.in_(part), file_revs.c.rev <= through)
            for fr in tx.conn.execute(select(file_revs.c.blocklist).where(*cond)):
                for h in {c[0] for c in json.loads(fr.blocklist)}:
                    tx.ref_counts[h] = tx.ref_counts.get(h, 0) - 1
            tx.conn.execute(delete(file_revs).where(*cond))

    def move(self, user_id: int, ns_id: int, src: str, dst: str, expected_rev: int | None = None) -> Entry:
        src, dst = paths.normalize(src), paths.normalize(dst)
        if paths.ROOT in (src, dst):
            raise BadRequest("the root cannot be moved, nor anything moved onto it")
        same_key = paths.key(src) == paths.key(dst)
        if not same_key and paths.is_within(dst, src):
            raise BadRequest(f"cannot move {src} into itself ({dst})")

        def run(tx: _Txn) -> Entry:
            self._guard_mounts(tx, src)
            self._guard_mounts(tx, dst)
            row = tx.live(paths.key(src))
            if row is None:
                raise NotFound(f"{src} does not exist")
            if expected_rev is not None and row.rev != expected_rev and not self._same_as_before_share(tx, row, expected_rev):
                raise Conflict(f"{row.path} changed: it is at revision {row.rev}, not {expected_rev}", current_rev=row.rev)
            if not same_key and tx.live(paths.key(dst)) is not None:
                raise Conflict(f"{dst} already exists", code="destination_exists")
            parent, name = paths.split(dst)
            parent_id, parent_path = self._ensure_folder(tx, parent)
            dst_path = paths.join(parent_path, name)
            if same_key and row.path == dst_path:
                return _entry(row)
            jid = tx.next_jid()
            old_path = row.path
            tx.flush(self._insert_ignore)  # the statements below read and write the tables directly
            if row.kind == "folder":
                lo, hi = _key_range(paths.key(src))
                kids = tx.conn.execute(
                    select(nodes.c.node_id, nodes.c.path).where(
                        nodes.c.ns_id == tx.ns_id, nodes.c.path_key > lo, nodes.c.path_key < hi
                    )
                ).all()
                # Free the old keys first, so that a case-only rename never collides with itself.
                params = []
                for k in kids:
                    new = paths.check_length(paths.rebase(k.path, old_path, dst_path))
                    params.append({"nid": k.node_id, "p": new, "k": paths.key(new)})
                if params:
                    stmt = update(nodes).where(nodes.c.ns_id == tx.ns_id, nodes.c.node_id == bindparam("nid"))
                    tx.conn.execute(stmt.values(path_key=None), [{"nid": p["nid"]} for p in params])
                    tx.conn.execute(stmt.values(path=bindparam("p"), path_key=bindparam("k")), params)
            tx.conn.execute(
                update(nodes)
                .where(nodes.c.ns_id == tx.ns_id, nodes.c.node_id == row.node_id)
                .values(parent_id=parent_id, name=name, path=dst_path, path_key=paths.key(dst), rev=jid)
            )
            tx.journal(
                "move", node_id=row.node_id, parent_id=parent_id, kind=row.kind, path=dst_path, rev=jid,
                size=row.size, content_hash=row.content_hash, mtime=row.mtime, mode=row.mode,
                old_path=old_path, old_parent_id=row.parent_id,
            )
            tx.forget()
            moved = tx.live(paths.key(dst))
            assert moved is not None
            return _entry(moved)

        return self._write_ns(ns_id, user_id, run)

    def restore(self, user_id: int, ns_id: int, path: str, rev: int) -> Entry:
        path = paths.normalize(path)

        def run(tx: _Txn) -> Entry:
            node_id = self._node_for_history(tx.conn, ns_id, path)
            fr = tx.conn.execute(
                select(file_revs).where(
                    file_revs.c.ns_id == ns_id, file_revs.c.node_id == node_id, file_revs.c.rev == int(rev)
                )
            ).first()
            if fr is None:
                raise NotFound(f"{path} has no revision {rev}: see 'cubby history {path}'")
            chunks = tuple(ChunkRef(h, s) for h, s in json.loads(fr.blocklist))
            live = tx.live(paths.key(path))
            revive = None if live is not None else node_id
            return self._write_file(
                tx, path, chunks, fr.size, None, fr.mtime, check_expected=False, revive=revive, mode=fr.mode
            )

        return self._write_ns(ns_id, user_id, run)

    # ======================================================================================
    # chunks
    # ======================================================================================
    def chunk_readable(self, ns_ids: Iterable[int], hashes: Sequence[str]) -> set[str]:
        ns_list = sorted(set(ns_ids))
        wanted = sorted({h for h in hashes if isinstance(h, str) and HASH_RE.match(h)})
        if not ns_list or not wanted:
            return set()

        def run(conn: Connection) -> set[str]:
            out: set[str] = set()
            for i in range(0, len(wanted), 500):
                part = wanted[i : i + 500]
                out.update(
                    r[0]
                    for r in conn.execute(
                        select(ns_chunks.c.hash)
                        .join(blocks, blocks.c.hash == ns_chunks.c.hash)
                        .where(ns_chunks.c.ns_id.in_(ns_list), ns_chunks.c.hash.in_(part))
                        .distinct()
                    )
                )
            return out

        return self.db.read(run)

    def _make_available(self, conn: Connection, ns_id: int, hashes: builtins.list[str], now: float) -> None:
        self._insert_ignore(
            conn, ns_chunks, [{"ns_id": ns_id, "hash": h, "refs": 0, "touched_at": now} for h in hashes]
        )
        conn.execute(
            update(ns_chunks)
            .where(ns_chunks.c.ns_id == ns_id, ns_chunks.c.hash == bindparam("h"))
            .values(touched_at=now),
            [{"h": h} for h in hashes],
        )

    def ingest_chunks(self, ns_id: int, items: Sequence[tuple[str, bytes]], blocks_store: BlockStore) -> int:
        if not items:
            return 0
        unique: dict[str, bytes] = {}
        for name, data in items:
            unique.setdefault(name, data)
        flags = blocks_store.put_many(list(unique.items()))  # verifies every hash, then one barrier
        new = sum(1 for f in flags if f)
        names = sorted(unique)

        def run(conn: Connection) -> None:
            now = time.time()
            present: set[str] = set()
            for i in range(0, len(names), 500):
                part = names[i : i + 500]
                q = select(blocks.c.hash).where(blocks.c.hash.in_(part))
                if not self.db.is_sqlite:
                    q = q.with_for_update()
                present.update(r[0] for r in conn.execute(q))
            fresh = [h for h in names if h not in present]
            if fresh:
                # Waits for a collector holding these tombstones; after that, it cannot take
                # the bytes any more (it re-checks the tombstone under its lock).
                for i in range(0, len(fresh), 500):
                    conn.execute(delete(chunk_tombstones).where(chunk_tombstones.c.hash.in_(fresh[i : i + 500])))
            # The collector may have removed these bytes between put_many and this lock; only
            # then is a chunk written (and so verified) a second time.
            stored = blocks_store.present(fresh) if fresh else set()
            again = [(h, unique[h]) for h in fresh if h not in stored]
            if again:
                blocks_store.put_many(again)
            self._insert_ignore(
                conn, blocks, [{"hash": h, "size": len(unique[h]), "touched_at": now} for h in fresh]
            )
            if present:
                conn.execute(
                    update(blocks).where(blocks.c.hash == bindparam("h")).values(touched_at=now),
                    [{"h": h} for h in sorted(present)],
                )
            self._make_available(conn, ns_id, names, now)

        self.db.write(run)
        return new

    def challenge(self, user_id: int, ns_id: int, chunk_hash: str, size: int, *, at: float | None = None) -> str:
        return self.challenges.nonce(user_id, ns_id, chunk_hash, size, at=at)

    def accept_proofs(
        self, user_id: int, ns_id: int, claims: Sequence[Claim], blocks_store: ChunkReader,
        *, within: Iterable[int] | None = None,
    ) -> Checked:
        """Check claims (`cubby.metadata.possession.check_claims`) and make the proven chunks
        available to ``ns_id``. ``within``: dedup only against chunks these namespaces hold
        (the caller's own, for ``dedup_scope = user``); None means any chunk the server holds."""
        eligible = None if within is None else self.chunk_readable(within, [c.hash for c in claims]).__contains__
        checked = check_claims(self.challenges, user_id, ns_id, claims, blocks_store, eligible)
        accepted = checked.proven
        if not accepted:
            return checked
        now = time.time()

        def run(conn: Connection) -> list[str]:
            q = select(blocks.c.hash).where(blocks.c.hash.in_(accepted))
            if not self.db.is_sqlite:
                q = q.with_for_update()
            still = sorted(r[0] for r in conn.execute(q))
            if still:
                conn.execute(
                    update(blocks).where(blocks.c.hash.in_(still)).values(touched_at=now)
                )
                self._make_available(conn, ns_id, still, now)
            return still

        still = self.db.write(run)
        checked.rejected = sorted([*checked.rejected, *(h for h in accepted if h not in still)])
        checked.proven = still
        return checked

    def collect_garbage(
        self, blocks_store: BlockStore, grace_seconds: float, *, fault: Callable[[str], None] | None = None
    ) -> GcStats:
        """Remove chunks that no revision references and nobody touched within the grace period.

        Two steps, so that bytes are never deleted before the rows that point at them are gone
        (a crash or a failed COMMIT between the two leaves only a tombstone, never a row without
        its bytes):

        1. **Sweep.** Lock the candidates' ``blocks`` rows, re-check in a fresh statement that
           no revision references them, delete their ``blocks`` and ``ns_chunks`` rows and
           write a tombstone for each, in one transaction.
        2. **Reclaim.** Lock the tombstones still there (an upload that brought a chunk back
           deleted its tombstone in the transaction that re-created its row), and with the
           locks held remove the bytes (`BlockStore.delete`: a pack store forgets the chunk's
           location, in this same transaction when its index is on this database) and then the
           tombstones.

        ``fault(step)`` is called for crash tests: before each step's commit ("sweeping",
        "reclaiming") and after it ("swept", "reclaimed")."""
        hook = fault or (lambda _step: None)
        cutoff = time.time() - grace_seconds
        examined = deleted = freed = 0

        def candidates(conn: Connection) -> list[str]:
            referenced = select(ns_chunks.c.hash).where(ns_chunks.c.hash == blocks.c.hash, ns_chunks.c.refs > 0)
            return [
                r[0]
                for r in conn.execute(
                    select(blocks.c.hash).where(blocks.c.touched_at < cutoff, ~referenced.exists()).limit(500)
                )
            ]

        def sweep(conn: Connection, batch: list[str]) -> tuple[int, int]:
            q = select(blocks.c.hash, blocks.c.size).where(blocks.c.hash.in_(batch), blocks.c.touched_at < cutoff)
            if not self.db.is_sqlite:
                q = q.with_for_update()
            locked = {r[0]: int(r[1]) for r in conn.execute(q)}
            if not locked:
                return 0, 0
            # A fresh statement, after the locks: sees every commit that referenced these chunks.
            still = {
                r[0]
                for r in conn.execute(
                    select(ns_chunks.c.hash).where(ns_chunks.c.hash.in_(list(locked)), ns_chunks.c.refs > 0)
                )
            }
            victims = sorted(set(locked) - still)
            if not victims:
                return 0, 0
            conn.execute(delete(ns_chunks).where(ns_chunks.c.hash.in_(victims)))
            conn.execute(delete(blocks).where(blocks.c.hash.in_(victims)))
            now = time.time()
            self._insert_ignore(conn, chunk_tombstones, [{"hash": h, "at": now} for h in victims])
            hook("sweeping")  # rows deleted, not yet committed
            return len(victims), sum(locked[h] for h in victims)

        self._adopt_orphans(blocks_store)
        seen: set[str] = set()
        while True:
            batch = [h for h in self.db.read(candidates) if h not in seen]
            if not batch:
                break
            seen.update(batch)
            examined += len(batch)
            n, b = self.db.write(functools.partial(sweep, batch=batch))
            deleted += n
            freed += b
        hook("swept")
        self.reclaim_tombstones(blocks_store, hook)
        hook("reclaimed")
        return GcStats(examined=examined, deleted=deleted, bytes_freed=freed)

    def reclaim_tombstones(self, blocks_store: BlockStore, hook: Callable[[str], None] = lambda _step: None) -> int:
        """Remove the bytes of tombstoned chunks (step 2 of `collect_garbage`); returns how many."""

        def page(conn: Connection) -> list[str]:
            return [r[0] for r in conn.execute(select(chunk_tombstones.c.hash).order_by(chunk_tombstones.c.hash).limit(500))]

        def reclaim(conn: Connection, batch: list[str]) -> int:
            q = select(chunk_tombstones.c.hash).where(chunk_tombstones.c.hash.in_(batch))
            if not self.db.is_sqlite:
                q = q.with_for_update()
            held = sorted(r[0] for r in conn.execute(q))
            if not held:
                return 0
            # Defensive: a chunk that has a row again is live whatever its tombstone says.
            alive = {r[0] for r in conn.execute(select(blocks.c.hash).where(blocks.c.hash.in_(held)))}
            gone = [h for h in held if h not in alive]
            for h in gone:
                blocks_store.delete(h)
            hook("reclaiming")  # bytes gone, tombstones not yet: a crash here loses nothing referenced
            conn.execute(delete(chunk_tombstones).where(chunk_tombstones.c.hash.in_(held)))
            return len(gone)

        total = 0
        while True:
            batch = self.db.read(page)
            if not batch:
                return total
            total += self.db.write(functools.partial(reclaim, batch=batch))

    def _adopt_orphans(self, blocks_store: BlockStore) -> int:
        """Give a ``blocks`` row to every stored chunk that has none (a writer died between
        storing the bytes and recording them), touched now: a later collection, past the grace
        period, removes it under the same row lock as any other chunk. Bytes that do not match
        their name are removed at once."""
        adopted = 0
        batch: list[str] = []

        def flush(names: list[str]) -> int:
            # Tombstoned chunks are on their way out (`reclaim_tombstones`), not orphans.
            known = set(
                self.db.read(
                    lambda c: [r[0] for r in c.execute(select(blocks.c.hash).where(blocks.c.hash.in_(names)))]
                    + [r[0] for r in c.execute(select(chunk_tombstones.c.hash).where(chunk_tombstones.c.hash.in_(names)))]
                )
            )
            rows = []
            for h in names:
                if h in known:
                    continue
                try:
                    data = blocks_store.get(h)
                except CubbyError:
                    blocks_store.delete(h)  # unreadable or corrupt: it can never be served
                    continue
                rows.append({"hash": h, "size": len(data), "touched_at": time.time()})
            if rows:
                self.db.write(lambda c: self._insert_ignore(c, blocks, rows))
            return len(rows)

        for name in blocks_store.iterate():
            batch.append(name)
            if len(batch) >= 500:
                adopted += flush(batch)
                batch = []
        if batch:
            adopted += flush(batch)
        return adopted


def open_store(url: str, *, migrate_schema: bool = True) -> SqlMetadataStore:
    """Open (and by default migrate to the newest schema) the metadata database at ``url``."""
    db = Database(url)
    if migrate_schema:
        migrate.upgrade(db.writer)
    return SqlMetadataStore(db)


__all__ = ["SqlMetadataStore", "content_hash_of", "open_store", "token_hash"]

"""`LinkStore`: public links to a file or a folder, on the same database as the metadata store.

A link names its target by ``(ns_id, node_id)``, the node's stable id, so it follows renames
and moves of the target (or of any folder above it) and stops working once the node is deleted.
Contract:

- The link token is shown once, at creation; only its SHA-256 is stored (like API tokens), so
  a copy of the database does not give anyone a working link. 256 random bits make it
  unguessable, so one salted-free hash is enough, and a lookup is one unique-index probe.
- An optional password is stored as a scrypt hash with a per-link salt: a slow KDF, because a
  password (unlike the token) may be weak.
- `resolve` raises the same `NotFound` for a token that never existed, a revoked or expired
  link, a link whose target was deleted and one whose creator is disabled: a caller learns
  nothing from the difference.
- Access control of the *creator* is the server's job (`cubby.server.links`): this module
  trusts the namespace and node it is given, as `SqlMetadataStore` does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.engine import Connection, Row

from cubby.core import paths
from cubby.errors import BadRequest, NotFound
from cubby.metadata.engine import Database
from cubby.metadata.nstxn import lock_namespace
from cubby.metadata.schema import file_revs, link_tokens, links, namespaces, nodes, users
from cubby.metadata.shards import ShardRouter
from cubby.metadata.users import token_hash
from cubby.model import ChunkRef, Entry

ROOT_NODE = 0
"""The node id of a namespace's root folder, which has no row in ``nodes``."""
WALK_PAGE = 500
"""Nodes read per query while walking a folder for a zip: bounds memory, whatever the folder's size."""
GONE = "this link does not exist, has expired or was revoked"
"""The one message of every dead link, so that none can be told from another."""

# scrypt at N=2^14, r=8, p=1 costs ~16 MiB and tens of milliseconds: slow for a guesser, fine per request.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1


def hash_password(password: str, *, n: int = _SCRYPT_N, r: int = _SCRYPT_R, p: int = _SCRYPT_P) -> str:
    """``scrypt$n$r$p$salt$hash`` (hex), with a fresh random salt for each link."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; the final comparison is constant-time."""
    try:
        scheme, n, r, p, salt, want = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode("utf-8"), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
            maxmem=64 * 1024 * 1024, dklen=len(want) // 2,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got.hex(), want)


@dataclass(frozen=True)
class Link:
    link_id: str
    ns_id: int
    node_id: int
    created_by: int
    created_at: float
    expires_at: float | None
    has_password: bool
    revoked_at: float | None = None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class LinkInfo:
    """A link as its creator lists it: ``path`` (inside the namespace) and ``kind`` are the
    target's current ones, both None once the target is deleted."""

    link: Link
    path: str | None
    kind: str | None
    creator: str | None = None
    """The creator's user name (in `for_owner` listings, where it is somebody else)."""


@dataclass(frozen=True)
class Resolved:
    """A live link and its target's current state."""

    link: Link
    target: Entry
    password_hash: str | None


@dataclass(frozen=True)
class TreeItem:
    """One node below a folder, for a zip: ``rel`` is its path relative to the folder."""

    rel: str
    kind: str
    size: int
    mtime: float | None
    chunks: tuple[ChunkRef, ...] = ()


def _link(row: Row[Any]) -> Link:
    m = row._mapping
    return Link(
        link_id=m["link_id"], ns_id=int(m["ns_id"]), node_id=int(m["node_id"]), created_by=int(m["created_by"]),
        created_at=float(m["created_at"]), expires_at=m["expires_at"], has_password=m["password_hash"] is not None,
        revoked_at=m["revoked_at"],
    )


def _node_entry(row: Row[Any]) -> Entry:
    m = row._mapping
    return Entry(
        ns_id=int(m["ns_id"]), node_id=int(m["node_id"]), parent_id=m["parent_id"], path=m["path"], name=m["name"],
        kind=m["kind"], rev=int(m["rev"]), size=int(m["size"] or 0), content_hash=m["content_hash"], mtime=m["mtime"],
        deleted=bool(m["deleted"]),
    )


class LinkStore:
    """Links of a deployment (`SqlMetadataStore.links`): each link's row is on the shard of the
    namespace it points into, beside its target, so serving it is one shard's reads. A token
    or a link id alone names no namespace: the directory's ``link_tokens`` maps both to it
    (written first at creation; a token there without its shard row is just a dead link).
    Listing a user's links asks each shard (links are listed rarely, served often)."""

    def __init__(self, db: Database | ShardRouter) -> None:
        self.router = db if isinstance(db, ShardRouter) else ShardRouter(db)

    def _shard_dbs(self) -> list[Database]:
        return list({id(d): d for d in self.router.shards.values()}.values())

    def _namespace_of(self, where: Any) -> int | None:
        """The namespace of the link the directory's ``link_tokens`` row matching ``where`` names."""
        ns = self.router.directory.read(lambda c: c.execute(select(link_tokens.c.ns_id).where(where)).scalar())
        return None if ns is None else int(ns)

    # -- managing ---------------------------------------------------------------------------
    def create(
        self, user_id: int, ns_id: int, node_id: int, *, expires_at: float | None = None, password: str | None = None
    ) -> tuple[Link, str]:
        """Make a link to node ``node_id`` of ``ns_id``; return it and its token (shown once).
        `BadRequest` for an expiry that is not in the future."""
        now = time.time()
        if expires_at is not None and expires_at <= now:
            raise BadRequest("the expiry date is in the past; give a future date", code="expires_in_past", field="expires")
        token = secrets.token_urlsafe(32)
        link = Link(
            link_id=secrets.token_hex(8), ns_id=ns_id, node_id=node_id, created_by=user_id, created_at=now,
            expires_at=expires_at, has_password=password is not None,
        )
        pw_hash = hash_password(password) if password is not None else None

        def run(conn: Connection) -> None:
            # Under the namespace's lock, like every write to its rows: a namespace being moved
            # to another shard refuses it (retryable) rather than lose it with the old copy.
            lock_namespace(db, conn, ns_id)
            conn.execute(
                insert(links).values(
                    ns_id=ns_id, link_id=link.link_id, node_id=node_id, token_hash=token_hash(token),
                    created_by=user_id, created_at=now, expires_at=expires_at, password_hash=pw_hash,
                )
            )

        self.router.directory.write(
            lambda c: c.execute(insert(link_tokens).values(token_hash=token_hash(token), link_id=link.link_id, ns_id=ns_id))
        )
        db = self.router.db_for(ns_id)
        db.write(run)
        return link, token

    def for_user(self, user_id: int) -> list[LinkInfo]:
        """The user's links that are not revoked, newest first, with their targets' current paths."""
        return self._infos(links.c.created_by == user_id)

    def for_owner(self, user_id: int) -> list[LinkInfo]:
        """Links that *other* users made into namespaces ``user_id`` owns (members' links into
        their shared folders), not revoked, newest first, each with its creator's name: the
        owner decides what of their folder is public, so they can see and revoke these."""
        owned = select(namespaces.c.ns_id).where(namespaces.c.owner_id == user_id)
        return self._infos(and_(links.c.ns_id.in_(owned), links.c.created_by != user_id))

    def _infos(self, where: Any) -> list[LinkInfo]:
        """Links matching ``where`` on every shard, newest first; creators' names from the
        directory (one query each, never a join across databases)."""
        q = (
            select(links, nodes.c.path, nodes.c.kind, nodes.c.deleted)
            .select_from(
                links.outerjoin(nodes, and_(nodes.c.ns_id == links.c.ns_id, nodes.c.node_id == links.c.node_id))
            )
            .where(where, links.c.revoked_at.is_(None))
        )
        rows = [row for db in self._shard_dbs() for row in db.read(lambda c: c.execute(q).all())]
        rows.sort(key=lambda r: r.created_at, reverse=True)
        creators = sorted({int(r.created_by) for r in rows})
        names: dict[int, str] = {}
        if creators:
            names = dict(
                self.router.directory.read(
                    lambda c: c.execute(select(users.c.id, users.c.name).where(users.c.id.in_(creators))).all()
                )
            )
        out = []
        for row in rows:
            link = _link(row)
            creator = names.get(int(row.created_by))
            if link.node_id == ROOT_NODE:
                out.append(LinkInfo(link, paths.ROOT, "folder", creator))
            elif row.path is None or row.deleted:
                out.append(LinkInfo(link, None, None, creator))
            else:
                out.append(LinkInfo(link, row.path, row.kind, creator))
        return out

    def revoke(self, user_id: int, link_id: str) -> Link:
        """Revoke a link the user made, or any link into a namespace the user owns; `NotFound`
        for any other link (or one already revoked), exactly as for one that never existed."""

        def run(conn: Connection) -> Link | None:
            owned = select(namespaces.c.ns_id).where(namespaces.c.owner_id == user_id)
            row = conn.execute(
                select(links).where(
                    links.c.link_id == link_id,
                    or_(links.c.created_by == user_id, links.c.ns_id.in_(owned)),
                    links.c.revoked_at.is_(None),
                )
            ).first()
            if row is None:
                return None
            assert db is not None
            lock_namespace(db, conn, int(row.ns_id))  # see `create`
            conn.execute(
                update(links).where(links.c.ns_id == row.ns_id, links.c.link_id == link_id).values(revoked_at=time.time())
            )
            return _link(row)

        ns = self._namespace_of(link_tokens.c.link_id == link_id)
        db = None if ns is None else self.router.db_for(ns)
        found = None if db is None else db.write(run)
        if found is None:
            raise NotFound(f"you have no link {link_id}")
        return found

    # -- serving ----------------------------------------------------------------------------
    def resolve(self, token: str, *, now: float | None = None) -> Resolved:
        """The live link with this token and its target now; `NotFound` (message `GONE`) for
        an unknown token, a revoked or expired link, and a deleted target alike."""
        now = time.time() if now is None else now

        def run(conn: Connection) -> Resolved | None:
            row = conn.execute(select(links).where(links.c.token_hash == token_hash(token))).first()
            if row is None or row.revoked_at is not None:
                return None
            link = _link(row)
            if link.expired(now):
                return None
            target = self._node(conn, link.ns_id, link.node_id)
            return None if target is None else Resolved(link, target, row.password_hash)

        ns = self._namespace_of(link_tokens.c.token_hash == token_hash(token))
        found = None if ns is None else self.router.db_for(ns).read(run)
        if found is None or self._creator_disabled(found.link.created_by):
            raise NotFound(GONE)
        return found

    def _creator_disabled(self, user_id: int) -> bool:
        """Whether the link's creator is disabled (`cubby user disable`): a disabled account
        publishes nothing, and its links answer as a revoked one does. Users live on the
        directory, links on their namespace's shard, so this is a read of its own."""
        return self.router.directory.read(
            lambda c: c.execute(select(users.c.disabled_at).where(users.c.id == user_id)).scalar()
        ) is not None

    def _node(self, conn: Connection, ns_id: int, node_id: int) -> Entry | None:
        if node_id == ROOT_NODE:
            head = conn.execute(select(namespaces.c.head).where(namespaces.c.ns_id == ns_id)).scalar()
            if head is None:
                return None
            return Entry(ns_id=ns_id, node_id=ROOT_NODE, parent_id=None, path=paths.ROOT, name="", kind="folder", rev=int(head))
        row = conn.execute(select(nodes).where(nodes.c.ns_id == ns_id, nodes.c.node_id == node_id)).first()
        if row is None or row.deleted or row.path_key is None:
            return None
        return _node_entry(row)

    def lookup(self, ns_id: int, path: str) -> Entry:
        """The live node at ``path`` (normalised, inside the namespace); `NotFound` (`GONE`) if none."""
        row = self.router.db_for(ns_id).read(
            lambda c: c.execute(select(nodes).where(nodes.c.ns_id == ns_id, nodes.c.path_key == paths.key(path))).first()
        )
        if row is None:
            raise NotFound(GONE)
        return _node_entry(row)

    def file(self, ns_id: int, node_id: int) -> tuple[Entry, list[ChunkRef]]:
        """The current state and chunks of a live file, read in one transaction."""

        def run(conn: Connection) -> tuple[Entry, list[ChunkRef]] | None:
            row = conn.execute(select(nodes).where(nodes.c.ns_id == ns_id, nodes.c.node_id == node_id)).first()
            if row is None or row.deleted or row.kind != "file" or row.content_rev is None:
                return None
            blocklist = conn.execute(
                select(file_revs.c.blocklist).where(
                    file_revs.c.ns_id == ns_id, file_revs.c.node_id == node_id, file_revs.c.rev == row.content_rev
                )
            ).scalar()
            if blocklist is None:
                return None
            return _node_entry(row), [ChunkRef(h, int(s)) for h, s in json.loads(blocklist)]

        found = self.router.db_for(ns_id).read(run)
        if found is None:
            raise NotFound(GONE)
        return found

    def walk(self, ns_id: int, folder: str) -> Iterator[TreeItem]:
        """Every live node below ``folder``, parents before children, with each file's chunks.

        Read a page at a time (one short read transaction each), so a folder of any size costs
        bounded memory and no long-held snapshot; a change made during the walk may or may not
        be seen, as with any listing that is paged."""
        key = paths.key(folder)
        base = "" if key == paths.ROOT else key
        lo, hi = base + "/", base + "0"  # '/' + 1 == '0': every key strictly below the folder
        after = lo
        while True:

            def page(conn: Connection, after: str = after) -> tuple[list[Row[Any]], dict[int, str]]:
                rows = list(
                    conn.execute(
                        select(nodes)
                        .where(nodes.c.ns_id == ns_id, nodes.c.path_key > after, nodes.c.path_key < hi)
                        .order_by(nodes.c.path_key)
                        .limit(WALK_PAGE)
                    ).all()
                )
                revs = [r.content_rev for r in rows if r.kind == "file" and r.content_rev is not None]
                lists: dict[int, str] = {}
                if revs:
                    for rev, bl in conn.execute(
                        select(file_revs.c.rev, file_revs.c.blocklist).where(
                            file_revs.c.ns_id == ns_id, file_revs.c.rev.in_(revs)
                        )
                    ):
                        lists[int(rev)] = bl
                return rows, lists

            rows, lists = self.router.db_for(ns_id).read(page)
            for r in rows:
                rel = paths.rebase(r.path, folder, paths.ROOT).lstrip("/")
                if r.kind == "folder":
                    yield TreeItem(rel, "folder", 0, r.mtime)
                elif r.content_rev in lists:
                    chunks = tuple(ChunkRef(h, int(s)) for h, s in json.loads(lists[r.content_rev]))
                    yield TreeItem(rel, "file", int(r.size or 0), r.mtime, chunks)
            if len(rows) < WALK_PAGE:
                return
            after = rows[-1].path_key


__all__ = ["GONE", "Link", "LinkInfo", "LinkStore", "Resolved", "TreeItem", "check_password", "hash_password"]

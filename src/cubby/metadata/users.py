"""`UserDirectory`: users and their API tokens.

Directory-side: ``users`` and ``tokens`` are keyed by user, not by namespace, and live in the
directory database. One call crosses into a namespace: `create_user` also creates the user's
root namespace on the shard `ShardRouter.place_new` picks, with an id from that shard's
counter (`allocate_ns_id`). On one database that is one transaction; sharded, the namespace
row commits on its shard inside the directory's transaction, before the user and placement
rows commit, so a failure leaves at most an empty namespace nobody reaches, never a user
without a root.

A token is shown once, at creation; only its SHA-256 is stored (`token_hash`): 256 random bits
need no salt, and a lookup is one unique-index probe.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from cubby.errors import AccountDisabled, BadRequest, Conflict, NotFound, Unauthorized
from cubby.metadata.engine import Database
from cubby.metadata.schema import namespaces, tokens, users, web_sessions
from cubby.metadata.shards import ShardRouter, allocate_ns_id
from cubby.model import User

USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


DISABLED = "this account is disabled: ask the server's administrator ('cubby user enable NAME')"


@dataclass(frozen=True, slots=True)
class Disabled:
    """What `UserDirectory.set_disabled` did: ``changed`` is False when the user already was
    in that state; ``token_hashes`` are all the user's tokens, the cache's keys."""

    user_id: int
    name: str
    disabled: bool
    changed: bool
    sessions_ended: int
    tokens_revoked: int
    token_hashes: list[str] = field(default_factory=list)


def end_web_sessions(conn: Connection, user_id: int, now: float) -> int:
    """End every live web session of ``user_id`` in the caller's transaction (a new password,
    a disabled account); how many were live."""
    return int(
        conn.execute(
            update(web_sessions)
            .where(web_sessions.c.user_id == user_id, web_sessions.c.revoked_at.is_(None))
            .values(revoked_at=now)
        ).rowcount
    )


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class UserDirectory:
    """Users and tokens of one (directory) database."""

    def __init__(self, db: Database, router: ShardRouter | None = None) -> None:
        self.db = db
        self.router = router or ShardRouter(db)

    def create_user(self, name: str) -> tuple[User, str]:
        if not isinstance(name, str) or not USER_RE.match(name):
            raise BadRequest(
                f"invalid user name {name!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )

        router = self.router
        shard = router.place_new()
        shard_db = router.shard_db(shard)

        def make_root(uid: int, now: float) -> int:
            """The root namespace on its shard (in the directory's transaction when the shard
            is the directory)."""
            ns = allocate_ns_id(router, shard)
            shard_db.write(
                lambda c: c.execute(
                    insert(namespaces).values(
                        ns_id=ns, kind="root", owner_id=uid, head=0, next_node=1, created_at=now
                    )
                )
            )
            return ns

        def run(conn: Connection) -> User:
            if conn.execute(select(users.c.id).where(users.c.name_key == name.lower())).first():
                raise Conflict(f"a user named {name!r} already exists")
            now = time.time()
            uid = int(
                conn.execute(
                    insert(users).values(name=name, name_key=name.lower(), created_at=now)
                ).inserted_primary_key[0]  # type: ignore[index]
            )
            # Sharded: the namespace row commits on its shard before the directory's user and
            # placement rows; if the directory transaction then fails, an unreachable empty
            # namespace is left, never a user without a root.
            ns = make_root(uid, now)
            router.place(ns, shard)
            conn.execute(update(users).where(users.c.id == uid).values(root_ns=ns))
            return User(id=uid, name=name, root_ns=ns)

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

    def list_users(self) -> list[dict[str, object]]:
        """Every user, by id, with the number of tokens not revoked and when the user was
        disabled (None: active), in one statement."""
        active = func.count(tokens.c.id)
        rows = self.db.read(
            lambda c: c.execute(
                select(
                    users.c.id, users.c.name, users.c.root_ns, users.c.created_at, users.c.disabled_at,
                    active.label("tokens"),
                )
                .select_from(users.outerjoin(tokens, (tokens.c.user_id == users.c.id) & tokens.c.revoked_at.is_(None)))
                .group_by(users.c.id, users.c.name, users.c.root_ns, users.c.created_at, users.c.disabled_at)
                .order_by(users.c.id)
            ).all()
        )
        return [dict(r._mapping) for r in rows]

    def create_token(self, user_id: int, label: str = "") -> tuple[int, str]:
        token = "cby_" + secrets.token_urlsafe(32)

        def run(conn: Connection) -> int:
            # Locking the user's row orders this with `set_disabled`: a token made while the
            # user is being disabled is refused here, not handed out to be refused later.
            row = conn.execute(
                select(users.c.id, users.c.disabled_at).where(users.c.id == user_id).with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"no user with id {user_id}")
            if row.disabled_at is not None:
                raise AccountDisabled(DISABLED)
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

    def token_owner(self, token: str) -> tuple[int, str, int, int]:
        """(user id, name, root namespace, token id) of a valid token; `Unauthorized` if it
        is unknown or revoked, `AccountDisabled` if its user is disabled. (Split from
        `authenticate` so that a cache can keep the two halves under their own keys: see
        `cubby.cache.store`.)"""
        if not token:
            raise Unauthorized("missing bearer token: pass 'Authorization: Bearer TOKEN' (cubby user add prints one)")

        def run(conn: Connection) -> Any:
            return conn.execute(
                select(
                    tokens.c.id, tokens.c.revoked_at, users.c.id.label("uid"), users.c.name, users.c.root_ns,
                    users.c.disabled_at,
                )
                .join(users, users.c.id == tokens.c.user_id)
                .where(tokens.c.token_hash == token_hash(token))
            ).first()

        row = self.db.read(run)
        if row is None:
            raise Unauthorized("unknown token: check CUBBY_TOKEN, or create one with 'cubby user add'")
        if row.revoked_at is not None:
            raise Unauthorized("this token was revoked: create a new one with 'cubby token create'")
        if row.disabled_at is not None:
            raise AccountDisabled(DISABLED)
        return int(row.uid), str(row.name), int(row.root_ns), int(row.id)

    def set_disabled(self, name: str, disabled: bool, *, revoke_tokens: bool = False) -> Disabled:
        """Disable (or enable again) the user ``name``, in one transaction.

        Disabling keeps everything the user has and refuses its use: `token_owner` refuses
        their tokens, `Accounts` their password and sessions (which are ended here, so an
        enabled user logs in afresh), `LinkStore.resolve` their public links. Their tokens
        are kept, so that enabling them again brings their devices back, unless
        ``revoke_tokens``: then they are revoked for good (an account taken over). Shared
        folders stay with their other members. What a cache holds of the tokens expires
        within `cubby.cache.store.TOKEN_SECONDS`; `Disabled` names the tokens, so a caller
        that reaches the cache can drop them at once."""
        def run(conn: Connection) -> Disabled:
            row = conn.execute(
                select(users.c.id, users.c.name, users.c.disabled_at)
                .where(users.c.name_key == str(name).lower())
                .with_for_update()
            ).first()
            if row is None:
                raise NotFound(f"no user named {name!r}: 'cubby user ls' lists them")
            now = time.time()
            uid = int(row.id)
            changed = (row.disabled_at is None) == disabled
            if changed:  # disabling again keeps when it was first done
                conn.execute(update(users).where(users.c.id == uid).values(disabled_at=now if disabled else None))
            sessions = 0
            revoked = 0
            if disabled:
                sessions = end_web_sessions(conn, uid, now)
                if revoke_tokens:
                    revoked = conn.execute(
                        update(tokens).where(tokens.c.user_id == uid, tokens.c.revoked_at.is_(None)).values(revoked_at=now)
                    ).rowcount
            hashes = [str(h) for h in conn.execute(select(tokens.c.token_hash).where(tokens.c.user_id == uid)).scalars()]
            return Disabled(
                user_id=uid, name=str(row.name), disabled=disabled, changed=changed,
                sessions_ended=sessions, tokens_revoked=int(revoked), token_hashes=hashes,
            )

        return self.db.write(run)

    def token_hash_of(self, token_id: int) -> str | None:
        """The stored hash of token ``token_id`` (None if there is none): the cache's key."""
        row = self.db.read(lambda c: c.execute(select(tokens.c.token_hash).where(tokens.c.id == token_id)).first())
        return None if row is None else str(row[0])


__all__ = ["DISABLED", "USER_RE", "Disabled", "UserDirectory", "end_web_sessions", "token_hash"]

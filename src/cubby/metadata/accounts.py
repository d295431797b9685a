"""`Accounts`: passwords and web sessions, on the same database as the metadata store.

Contract:

- A password is stored as an argon2id hash (argon2-cffi: salt and cost inside the string), a
  memory-hard function because people choose weak passwords. Hashing costs ~19 MiB and tens of
  milliseconds: callers run `verify` and `set_password` on a small bounded pool
  (`cubby.server.sessions`), so a flood of logins cannot take the server's memory.
- `verify` spends the same work whether the user exists or not (it hashes against a dummy), so
  a guesser cannot tell a wrong name from a wrong password by timing.
- A session's secret travels only in its cookie; the database keeps its SHA-256 (256 random
  bits, so one unsalted hash suffices, as for API tokens). The CSRF token is derived from the
  secret (`csrf_token`), so it needs no storage and dies with the session.
- Changing a password ends every session of that user.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from cubby.errors import AccountDisabled, BadRequest, NotFound, Unauthorized
from cubby.metadata.engine import Database
from cubby.metadata.schema import passwords, users, web_sessions
from cubby.metadata.users import DISABLED, end_web_sessions
from cubby.model import Principal

SESSION_SECONDS = 14 * 24 * 3600
"""A login lasts two weeks, then the person logs in again."""
TOUCH_SECONDS = 60
"""``last_seen`` is written at most once a minute per session: a read must not become a write."""
MIN_PASSWORD, MAX_PASSWORD = 8, 1024

PrincipalOf = Callable[..., Principal]


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def csrf_token(secret: str) -> str:
    """The CSRF token of a session: a one-way function of its secret, so a page that knows it
    learns nothing about the cookie, and a cross-site page (which cannot read the page) cannot
    know it at all."""
    return hashlib.sha256(b"cubby-csrf\0" + secret.encode("utf-8")).hexdigest()


def check_password_rules(password: str) -> None:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise BadRequest(
            f"a password must have {MIN_PASSWORD} to {MAX_PASSWORD} characters", code="weak_password"
        )


class Accounts:
    """Passwords and sessions of people (API tokens stay in `SqlMetadataStore`)."""

    def __init__(self, db: Database, principal_of: PrincipalOf, hasher: PasswordHasher | None = None) -> None:
        self.db = db
        self.principal_of = principal_of
        # OWASP's argon2id minimum (19 MiB, 2 passes): memory-hard, yet cheap enough per login.
        self.hasher = hasher or PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
        self._dummy = self.hasher.hash(secrets.token_hex(16))

    # -- passwords -------------------------------------------------------------------------
    def set_password(self, name: str, password: str) -> int:
        """Set (or change) a user's password; ends their sessions. Answers the user id."""
        check_password_rules(password)
        digest = self.hasher.hash(password)

        def run(conn: Connection) -> int:
            row = conn.execute(select(users.c.id).where(users.c.name_key == str(name).lower())).first()
            if row is None:
                raise NotFound(f"no user named {name!r}: create it with 'cubby user add {name}'")
            uid = int(row[0])
            now = time.time()
            conn.execute(delete(passwords).where(passwords.c.user_id == uid))
            conn.execute(insert(passwords).values(user_id=uid, hash=digest, changed_at=now))
            end_web_sessions(conn, uid, now)
            return uid

        return self.db.write(run)

    def verify(self, name: str, password: str) -> tuple[int, str] | None:
        """(user id, display name) when ``password`` is this user's; None otherwise, and
        `AccountDisabled` when it is right but the user is disabled."""
        if not isinstance(password, str) or len(password) > MAX_PASSWORD:
            return None

        def run(conn: Connection) -> Any:
            return conn.execute(
                select(users.c.id, users.c.name, users.c.disabled_at, passwords.c.hash)
                .join(passwords, passwords.c.user_id == users.c.id)
                .where(users.c.name_key == str(name).lower())
            ).first()

        row = self.db.read(run)
        stored = str(row.hash) if row is not None else self._dummy
        ok: bool
        try:
            ok = bool(self.hasher.verify(stored, password))
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or row is None:
            return None
        if row.disabled_at is not None:
            raise AccountDisabled(DISABLED)  # told only to whoever knows the password
        return int(row.id), str(row.name)

    # -- sessions --------------------------------------------------------------------------
    def create_session(self, user_id: int, address: str, agent: str) -> tuple[int, str]:
        """A new session for ``user_id``: (id, secret). The secret is shown only here."""
        secret = secrets.token_urlsafe(32)
        now = time.time()

        def run(conn: Connection) -> int:
            key = conn.execute(
                insert(web_sessions).values(
                    user_id=user_id, secret_hash=secret_hash(secret), created_at=now, last_seen=now,
                    expires_at=now + SESSION_SECONDS, revoked_at=None, address=address[:64], agent=agent[:200],
                )
            ).inserted_primary_key
            assert key is not None
            return int(key[0])

        return self.db.write(run), secret

    def authenticate(self, secret: str) -> tuple[Principal, int]:
        """The principal of a live session and the session's id; `Unauthorized` otherwise."""
        if not secret:
            raise Unauthorized("you are not logged in")

        def run(conn: Connection) -> Any:
            return conn.execute(
                select(
                    web_sessions.c.id, web_sessions.c.user_id, web_sessions.c.expires_at, web_sessions.c.revoked_at,
                    web_sessions.c.last_seen, users.c.name, users.c.root_ns, users.c.disabled_at,
                )
                .join(users, users.c.id == web_sessions.c.user_id)
                .where(web_sessions.c.secret_hash == secret_hash(secret))
            ).first()

        row = self.db.read(run)
        now = time.time()
        if row is None or row.revoked_at is not None or row.expires_at <= now:
            raise Unauthorized("your session ended: log in again", code="session_ended")
        if row.disabled_at is not None:
            # Disabling ends sessions; this is one a login made while it committed.
            raise AccountDisabled(DISABLED)
        if now - row.last_seen > TOUCH_SECONDS:
            self.db.write(
                lambda c: c.execute(update(web_sessions).where(web_sessions.c.id == row.id).values(last_seen=now))
            )
        p = self.principal_of(int(row.user_id), str(row.name), int(row.root_ns))
        return p, int(row.id)

    def list_sessions(self, user_id: int) -> list[dict[str, Any]]:
        """The user's live sessions, newest first."""
        now = time.time()
        rows = self.db.read(
            lambda c: c.execute(
                select(
                    web_sessions.c.id, web_sessions.c.created_at, web_sessions.c.last_seen,
                    web_sessions.c.expires_at, web_sessions.c.address, web_sessions.c.agent,
                )
                .where(
                    web_sessions.c.user_id == user_id, web_sessions.c.revoked_at.is_(None),
                    web_sessions.c.expires_at > now,
                )
                .order_by(web_sessions.c.id.desc())
            ).all()
        )
        return [dict(r._mapping) for r in rows]

    def revoke(self, user_id: int, session_id: int) -> None:
        def run(conn: Connection) -> None:
            res = conn.execute(
                update(web_sessions)
                .where(
                    web_sessions.c.id == session_id, web_sessions.c.user_id == user_id,
                    web_sessions.c.revoked_at.is_(None),
                )
                .values(revoked_at=time.time())
            )
            if res.rowcount == 0:
                raise NotFound(f"you have no open session {session_id}")

        self.db.write(run)


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))

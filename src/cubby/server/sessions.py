"""Logging people in: password login, the session cookie, CSRF checks, sessions to revoke.

- ``POST /api/v1/session`` ``{name, password}`` sets the cookie and answers ``{user, csrf}``;
  ``DELETE /api/v1/session`` logs out; ``GET /api/v1/sessions`` lists the caller's sessions and
  ``DELETE /api/v1/sessions/{id}`` ends one.
- The cookie is ``HttpOnly`` (no script reads it), ``SameSite=Lax`` (other sites' forms and
  fetches do not carry it on POST) and ``Secure`` when the request came over HTTPS.
- **CSRF.** A request authenticated by the cookie that may change something (any method but
  GET/HEAD/OPTIONS) must carry ``X-CSRF-Token`` equal to the session's token (`csrf_token`,
  given to the page at login and in the app shell) and, when the browser sends one, an
  ``Origin`` of this server. Bearer-token requests are untouched: a browser never attaches a
  bearer token by itself, so they cannot be forged cross-site.
- **Throttling.** Failed logins are counted per account and per client address
  (`cubby.server.peers`, so a load balancer's address is never the key); past the free
  attempts the answer is 429 with ``Retry-After`` before any password is hashed. Each attempt
  counts as a failure before its password is hashed (`Throttle.admit`), and a right one takes
  it back: a burst of concurrent guesses gets the free attempts, not one per guess in flight
  (counted after hashing, 32 guesses queued at once were all tried). The counts
  live in the deployment's shared cache when it has one (`cubby.server.throttle`), so the
  free attempts are per deployment, not per process; the throttle is asked on a request
  thread, since a shared one talks to its server.
- **Bounded hashing.** Password checks run on their own pool of ``HASH_WORKERS`` threads, and at
  most ``HASH_QUEUE`` logins wait for it (or for the throttle before it); beyond that the
  answer is 503 with ``Retry-After`` at once, before the throttle is asked, so argon2's memory
  per check cannot add up under a flood, nor the shared throttle's work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from cubby.errors import AccountDisabled, BadRequest, CubbyError, Forbidden, Unauthorized, Unavailable
from cubby.metadata.accounts import MAX_PASSWORD, csrf_token, same_secret
from cubby.model import Principal
from cubby.server.bodies import SMALL_JSON, allow_body, field_str, json_body, path_int
from cubby.server.context import ServerContext
from cubby.server.peers import TrustedProxies, scope_client_address
from cubby.server.throttle.base import Policy, admit_all, forgive_all

COOKIE = "cubby_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HASH_WORKERS = 2
HASH_QUEUE = 32
ACCOUNT_FREE, ADDRESS_FREE = 5, 20
"""Failed logins allowed before throttling: per account name, per client address."""


class TooManyAttempts(CubbyError):
    code = "too_many_attempts"
    status = 429


def is_https(conn: HTTPConnection, trusted: TrustedProxies) -> bool:
    if conn.url.scheme in ("https", "wss"):
        return True
    client = conn.scope.get("client")
    peer = str(client[0]) if client else ""
    return trusted.trusts(peer) and conn.headers.get("x-forwarded-proto", "").lower() == "https"


def same_origin(conn: HTTPConnection) -> bool:
    """True unless the browser says the request comes from another origin: ``Origin`` (sent on
    every cross-origin request and WebSocket) must name this host, and ``Sec-Fetch-Site``
    must not be ``cross-site``."""
    if conn.headers.get("sec-fetch-site", "") == "cross-site":
        return False
    origin = conn.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == conn.headers.get("host", "").lower()


def cookie_principal(conn: HTTPConnection, ctx: ServerContext) -> tuple[Principal, str] | None:
    """The principal of the request's session cookie (and the cookie), or None without one.
    Raises `Unauthorized` for an ended session and `Forbidden` for a forged request. Blocking:
    call it in a thread."""
    secret = conn.cookies.get(COOKIE)
    if not secret:
        return None
    p, _ = ctx.store.accounts.authenticate(secret)
    method = conn.scope.get("method", "GET")
    if not same_origin(conn):
        raise Forbidden("this request came from another site and was refused", code="csrf")
    if conn.scope["type"] == "http" and method not in SAFE_METHODS:
        sent = conn.headers.get(CSRF_HEADER, "")
        if not sent or not same_secret(sent, csrf_token(secret)):
            raise Forbidden(
                "this request lacks the page's security token: reload the page and try again", code="csrf"
            )
    return p, secret


async def principal(request: Request, ctx: ServerContext) -> Principal:
    """`cookie_principal` for a route: `Unauthorized` when there is no cookie either."""
    found = await run_in_threadpool(cookie_principal, request, ctx)
    if found is None:
        raise Unauthorized("you are not logged in: log in, or send 'Authorization: Bearer TOKEN'")
    return found[0]


def session_cookie(response: Response, secret: str, *, secure: bool, max_age: int | None) -> None:
    if max_age is None:
        response.delete_cookie(COOKIE, path="/", secure=secure, httponly=True, samesite="lax")
    else:
        response.set_cookie(
            COOKIE, secret, max_age=max_age, path="/", secure=secure, httponly=True, samesite="lax"
        )


def _jsonable(row: Mapping[str, Any], current: int) -> dict[str, Any]:
    return {**row, "current": row["id"] == current}


def routes(ctx: ServerContext) -> list[BaseRoute]:
    from cubby.metadata.accounts import SESSION_SECONDS

    trusted = TrustedProxies.parse(ctx.config.trusted_proxies)
    by_account = ctx.throttles.make("login-account", Policy(free=ACCOUNT_FREE))
    by_address = ctx.throttles.make("login-address", Policy(free=ADDRESS_FREE))
    pool = ThreadPoolExecutor(max_workers=HASH_WORKERS, thread_name_prefix="cubby-passwords")
    ctx.closers.append(pool.shutdown)
    waiting = 0

    def refuse(wait: int) -> Response:
        exc = TooManyAttempts(
            f"too many failed logins: wait {wait} seconds before trying again", retry_after=wait
        )
        return JSONResponse(exc.to_dict(), status_code=429, headers={"Retry-After": str(wait)})

    async def login(request: Request) -> Response:
        nonlocal waiting
        if not same_origin(request):
            raise Forbidden("this login came from another site and was refused", code="csrf")
        allow_body(request)  # logging in is how a caller becomes known: its small body is read first
        body = await json_body(request, SMALL_JSON)
        name = (field_str(body, "name") or "").strip()
        password = field_str(body, "password") or ""
        if not name or len(name) > 64 or len(password) > MAX_PASSWORD:
            raise BadRequest("give your user name and your password", code="bad_login")
        address = scope_client_address(request.scope, trusted)
        account_key = "u:" + name.lower()
        address_key = "a:" + address

        # A failure under both keys is recorded before the password is hashed (`admit_all`):
        # concurrent guesses cannot all pass the gate before the first of them counts.
        keys = ((by_account, account_key), (by_address, address_key))

        def locked() -> int:
            return max(by_account.retry_after(account_key), by_address.retry_after(address_key))

        # A full queue refuses before anything else: a flood of logins costs the shared
        # throttle nothing past it. Its place is taken before the first wait, so that no
        # more than ``HASH_QUEUE`` logins are ever past this line.
        if waiting >= HASH_QUEUE:
            raise Unavailable("the server is busy checking other logins: try again in a moment")
        waiting += 1
        try:
            wait = await ctx.in_thread(lambda: admit_all(keys))
            if wait:
                return refuse(wait)
            loop = asyncio.get_running_loop()
            found = await loop.run_in_executor(pool, ctx.store.accounts.verify, name, password)
        except AccountDisabled:
            await ctx.in_thread(lambda: forgive_all(keys))  # raised only for the right password: not a failed guess
            raise
        finally:
            waiting -= 1
        if found is None:  # its failure was recorded by `admit`; the one that locks says so
            wait = await ctx.in_thread(locked)
            if wait:
                return refuse(wait)
            raise Unauthorized("wrong user name or password", code="bad_login")

        def welcome() -> None:  # the address's failure in advance back; the account's all forgotten
            by_address.forgive(address_key)
            by_account.succeeded(account_key)

        await ctx.in_thread(welcome)
        user_id, display = found
        agent = request.headers.get("user-agent", "")
        _, secret = await run_in_threadpool(ctx.store.accounts.create_session, user_id, address, agent)
        response = JSONResponse({"user": display, "csrf": csrf_token(secret)})
        session_cookie(response, secret, secure=is_https(request, trusted), max_age=SESSION_SECONDS)
        return response

    async def logout(request: Request) -> Response:
        found = await run_in_threadpool(cookie_principal, request, ctx)
        response = Response(status_code=204)
        if found is not None:
            p, secret = found
            _, session_id = await run_in_threadpool(ctx.store.accounts.authenticate, secret)
            await run_in_threadpool(ctx.store.accounts.revoke, p.user_id, session_id)
        session_cookie(response, "", secure=is_https(request, trusted), max_age=None)
        return response

    async def listing(request: Request) -> Response:
        found = await run_in_threadpool(cookie_principal, request, ctx)
        if found is None:
            raise Unauthorized("you are not logged in")
        p, secret = found
        _, current = await run_in_threadpool(ctx.store.accounts.authenticate, secret)
        rows = await run_in_threadpool(ctx.store.accounts.list_sessions, p.user_id)
        return JSONResponse({"sessions": [_jsonable(r, current) for r in rows]})

    async def revoke(request: Request) -> Response:
        p = await principal(request, ctx)
        await run_in_threadpool(ctx.store.accounts.revoke, p.user_id, path_int(request, "session_id"))
        return Response(status_code=204)

    return [
        Route("/api/v1/session", login, methods=["POST"]),
        Route("/api/v1/session", logout, methods=["DELETE"]),
        Route("/api/v1/sessions", listing, methods=["GET"]),
        Route("/api/v1/sessions/{session_id}", revoke, methods=["DELETE"]),
    ]

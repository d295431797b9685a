"""The Broker Protocol: how commits in metadata processes reach notification processes.

A broker carries small messages on named topics between processes. cubby uses two kinds of
topic, both built here so that publisher and subscriber agree on them:

- ``ns.<ns_id>`` with payload ``<head>`` (ASCII digits): namespace ``ns_id`` has journal head
  ``head`` (or later);
- ``user.<user_id>`` with an empty payload: the set of namespaces that user can reach changed.

Delivery is best-effort, at most once (Redis pub/sub and core NATS give no more), and messages
may arrive out of order. That is enough because a message only ever says "go and look":
subscribers compare heads (a stale or repeated message wakes nobody), and a subscriber that may
have missed messages (its broker connection dropped) re-reads the journal heads from the
metadata database when it reconnects (``on_reconnect``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from cubby.core.urls import masked, take_query
from cubby.errors import BadRequest

MessageHandler = Callable[[str, bytes], None]
"""Called on the event loop with (topic without prefix, payload). Must not block."""
ReconnectHandler = Callable[[], Awaitable[None] | None]
"""Called on the event loop after the subscription was re-established following a loss of the
broker connection: messages published meanwhile may be lost, so the subscriber resynchronises."""

DEFAULT_PREFIX = "cubby"


class Broker(Protocol):
    """A publish/subscribe transport between cubby processes.

    Contract:
    - ``publish`` sends one message; it raises `cubby.errors.Unavailable` when the broker cannot
      be reached (the caller, `cubby.notify.publisher.Publisher`, keeps and retries), and never
      blocks the event loop for longer than one network round trip.
    - ``subscribe`` returns once the subscription to every cubby topic is in place, so that a
      message published after it returns is delivered unless the connection later drops. After
      that it keeps the subscription alive by itself, reconnecting with backoff forever, and
      calls ``on_reconnect`` after each re-established subscription. It is called at most once.
    - ``close`` releases connections and background tasks; it is idempotent.
    All methods are called from one event loop.
    """

    async def publish(self, topic: str, payload: bytes) -> None: ...

    async def subscribe(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None: ...

    async def close(self) -> None: ...


def ns_topic(ns_id: int) -> str:
    return f"ns.{ns_id}"


def user_topic(user_id: int) -> str:
    return f"user.{user_id}"


def split_prefix(url: str) -> tuple[str, str]:
    """Take the ``prefix`` query parameter (the topic namespace, so that several cubby
    deployments or test runs can share one Redis or NATS server) out of a broker URL."""
    values, rest = take_query(url, "prefix")
    prefix = values[0] if values else DEFAULT_PREFIX
    if not prefix or not all(c.isalnum() or c in "-_" for c in prefix):
        raise BadRequest(f"broker prefix {prefix!r} must be letters, digits, '-' or '_'", code="bad_broker_url")
    return rest, prefix


def broker_kind(url: str) -> str:
    """What `open_broker` would open for ``url`` (``memory``, ``local``, ``redis`` or ``nats``),
    checked as it checks it but opening nothing: a `BadRequest` (``bad_broker_url``) for a URL
    it would refuse. So that a command can refuse a bad URL before it changes anything."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else url.lower()
    if scheme == "memory":
        return "memory"
    if scheme == "local":
        from cubby.notify.local import folder_of

        folder_of(url)
        return "local"
    if scheme in ("redis", "rediss", "unix"):
        split_prefix(url)
        return "redis"
    if scheme in ("nats", "tls"):
        split_prefix(url)
        return "nats"
    raise BadRequest(
        f"unknown broker {masked(url)!r}: use 'memory', 'local:///FOLDER', 'redis://HOST:PORT/DB' or 'nats://HOST:PORT'", code="bad_broker_url"
    )


def open_broker(url: str) -> Broker:
    """``memory`` (one process), ``local:///FOLDER`` (the processes of one machine:
    `cubby.notify.local`), ``redis://host:port/db`` or ``nats://host:port``; the last two may
    carry ``?prefix=NAME`` to keep its topics apart from other deployments on the same server."""
    kind = broker_kind(url)
    if kind == "memory":
        from cubby.notify.memory import MemoryBroker

        return MemoryBroker()
    if kind == "local":
        from cubby.notify.local import LocalBroker, folder_of

        return LocalBroker(folder_of(url))
    base, prefix = split_prefix(url)
    if kind == "redis":
        from cubby.notify.redis import RedisBroker

        return RedisBroker(base, prefix=prefix)
    from cubby.notify.nats import NatsBroker

    return NatsBroker(base, prefix=prefix)

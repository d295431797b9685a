"""Service URLs: one query parameter taken out for cubby, and a password masked for people.

Why here: the broker URLs (`cubby.notify.base`) and the Redis cache URL (`cubby.cache.redis`)
both carry cubby's own ``?prefix=NAME``, which the client library must not see. Only the query
is rebuilt: `urllib.parse.urlunsplit` turns ``unix:///run/redis.sock`` (no host) into
``unix:/run/redis.sock``, which redis-py refuses from version 8.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode


def take_query(url: str, name: str) -> tuple[list[str], str]:
    """The values of the query parameter ``name`` in ``url`` (in order, blank ones too), and
    ``url`` without them: the rest of its query re-encoded, its fragment kept."""
    head, hash_, fragment = url.partition("#")
    base, _, query = head.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    rest = urlencode([(k, v) for k, v in pairs if k != name])
    return [v for k, v in pairs if k == name], base + ("?" + rest if rest else "") + hash_ + fragment


def masked(url: str) -> str:
    """``url`` with the password of its user part shown as ``***`` (a database, cache or
    broker URL printed at start, which a service manager keeps in its journal)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{hostport}{slash}{path}"


__all__ = ["masked", "take_query"]

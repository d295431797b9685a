"""Uploads straight to the bucket, the client's side: a pack plan read, and its body made.

Where the blocks role hands out PUTs (``uploads=direct``, `cubby.blockstore.directput`), the
client asks for a pack to hold a batch of its chunks (``/blocks/put_plan``), sends the pack
to the bucket itself and says so (``/blocks/put_done``). The plan names the pack's pieces in
order (the server's own bytes, or one of the client's chunks by name) and a signature for
each; the body is SigV4's ``aws-chunked`` encoding of those pieces, one piece per chunk of
the body: ``hex(size);chunk-signature=SIG`` CRLF, the bytes, CRLF, then the signed empty
chunk. The bucket checks each piece against its signature and stores nothing if one differs.

The client trusts nothing in a plan (`parse_put_plan`): every chunk it names must be one the
client asked to put, each exactly once and at its size; the server's own pieces are small;
the signatures are 64 hex digits, one per piece and the last; and the body must come to the
length the signed headers state. Anything else is `BadPlan`, and the chunks go up through the
blocks role as always. The body is a list of buffers (`GatheredBody`): the chunks' own bytes
are never copied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cubby.client.bucketreads import BadPlan

MAX_LITERAL = 1024 * 1024
"""The most bytes of one of the server's own pieces of a pack (8 KiB of gap, or the trailer of
at most a few thousand entries)."""
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_DROPPED = frozenset({"host", "content-length"})
"""Signed headers the client's HTTP stack writes itself (from the URL, from the body)."""


@dataclass(frozen=True, slots=True)
class PutPlan:
    """A pack to put: the PUT's ``url``, ``headers`` (but Host and Content-Length, which the
    HTTP stack writes), the ``body`` in buffers, its ``length``, and what ``put_done`` is
    told (``done``)."""

    url: str
    headers: dict[str, str]
    body: list[bytes | bytearray | memoryview]
    length: int
    done: dict[str, Any]


def _literal(part: Mapping[str, Any]) -> bytes:
    head, zeros, tail = part.get("head"), part.get("zeros"), part.get("tail")
    if not (isinstance(head, str) and isinstance(tail, str) and type(zeros) is int):
        raise BadPlan("a piece of the pack is neither a chunk nor the server's bytes")
    if not (_HEX.fullmatch(head) and _HEX.fullmatch(tail)) or not 0 <= zeros <= MAX_LITERAL:
        raise BadPlan("a piece of the pack has bytes that are not hex, or too many zeros")
    if len(head) // 2 + zeros + len(tail) // 2 > MAX_LITERAL:
        raise BadPlan("a piece of the pack made by the server is too large")
    return bytes.fromhex(head) + bytes(zeros) + bytes.fromhex(tail)


def parse_put_plan(answer: Any, ns_id: int, items: Mapping[str, bytes | bytearray | memoryview]) -> PutPlan | None:
    """The plan of a ``put_plan`` answer for ``items`` (name -> bytes), or None when the
    server hands out no PUTs (``{"direct": false}``); `BadPlan` for anything else odd."""
    if not isinstance(answer, dict):
        raise BadPlan("the put plan is not a JSON object")
    if answer.get("direct") is False:
        return None
    url, headers, parts, signatures = answer.get("url"), answer.get("headers"), answer.get("parts"), answer.get("signatures")
    pack, expires, ticket = answer.get("pack"), answer.get("expires"), answer.get("ticket")
    if not (
        answer.get("direct") is True and isinstance(url, str) and url.startswith(("http://", "https://"))
        and isinstance(headers, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
        and isinstance(parts, list) and isinstance(signatures, list) and len(signatures) == len(parts) + 1
        and all(isinstance(s, str) and _SIGNATURE.fullmatch(s) for s in signatures)
        and isinstance(pack, str) and type(expires) is int and isinstance(ticket, str)
    ):
        raise BadPlan("the put plan is not one this client follows")
    body: list[bytes | bytearray | memoryview] = []
    seen: set[str] = set()
    for part, signature in zip(parts, signatures):
        if not isinstance(part, dict):
            raise BadPlan("a piece of the pack is not a JSON object")
        name = part.get("chunk")
        data: bytes | bytearray | memoryview
        if name is None:
            data = _literal(part)
        else:
            if not isinstance(name, str) or name not in items or name in seen or part.get("size") != len(items[name]):
                raise BadPlan("the put plan names a chunk this client did not ask to put, or twice, or at another size")
            seen.add(name)
            data = items[name]
        body += (f"{len(data):x};chunk-signature={signature}\r\n".encode(), data, b"\r\n")
    if seen != set(items):
        raise BadPlan("the put plan leaves out chunks this client asked to put")
    body.append(f"0;chunk-signature={signatures[-1]}\r\n\r\n".encode())
    length = sum(len(b) for b in body)
    sent = {k: v for k, v in headers.items() if k.lower() not in _DROPPED}
    stated = {k.lower(): v for k, v in headers.items()}.get("content-length")
    if stated != str(length):
        raise BadPlan(f"the put plan's body is {length} bytes, its headers say {stated}")
    chunks: Sequence[list[Any]] = [[name, len(data)] for name, data in items.items()]
    done = {"ns_id": ns_id, "pack": pack, "chunks": chunks, "expires": expires, "ticket": ticket}
    return PutPlan(url, sent, body, length, done)


__all__ = ["MAX_LITERAL", "PutPlan", "parse_put_plan"]

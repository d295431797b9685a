"""The per-chunk nonce of a proof of possession, from a key both sides know.

The server derives a *proof key* per user, namespace and hour from its secret
(`cubby.metadata.possession.Challenges.key`) and hands it to that user (the account answer);
a chunk's nonce is an HMAC of the chunk's name and size under that key. So a client that holds
the key computes the nonce of any chunk itself, and can prove chunks before any commit has
named them (`cubby.client.upload`), while the server computes the same nonce from its secret.
Why that leaks nothing is in `cubby.metadata.possession`'s docstring.
"""

from __future__ import annotations

import hashlib
import hmac


def chunk_nonce(key: bytes, chunk_hash: str, size: int) -> str:
    """The nonce (32 hex digits) of ``chunk_hash`` of ``size`` bytes under a proof ``key``."""
    return chunk_nonce_bytes(key, chunk_hash, size).hex()


def chunk_nonce_bytes(key: bytes, chunk_hash: str, size: int) -> bytes:
    """`chunk_nonce` as its 16 bytes (what a proof hashes), without the round trip through hex
    that a server checking a thousand claims per request would pay for each.

    By ``hmac.new``, not ``hmac.digest``: the one-shot lets go of the GIL around its
    microseconds of hashing, and winning it back while another thread ran Python took 2.5-4.6 ms
    (`cubby.core.hashing`), for each of a batch's thousand nonces."""
    return hmac.new(key, f"{chunk_hash}:{size}".encode(), hashlib.sha256).digest()[:16]


__all__ = ["chunk_nonce", "chunk_nonce_bytes"]

"""Proofs of possession: what a client computes over a chunk's bytes to show the server that it
holds them, given the nonce the server's commit answer named for that chunk.

Both sides of the wire compute the same function, the client over the bytes it is about to
prove and the server over the chunk it holds (or zero filler of the claimed size, so that the
work does not say whether it holds one: `cubby.metadata.possession`), so it lives here, where
both may import it.

Two algorithms, named on the wire by the prove request (``"alg"``):

- ``blake3`` (`CURRENT`): the keyed BLAKE3 of the chunk, under a key derived from the nonce
  (BLAKE3's own key-derivation mode, with `KEY_CONTEXT`). Keyed BLAKE3 is a PRF: the key
  enters the compression of every 1 KiB leaf of the chunk and every parent node, so nothing a
  client could have computed before it saw the nonce (the chunk's SHA-256 name, its unkeyed
  BLAKE3, a hash of any part of it) stands in for the bytes, and every byte of the chunk is
  covered (no sampling). Measured on this project's 2-core machine (`bench/proof_cost.py`):
  0.21-0.27 CPU s/GiB against 0.89-0.99 for SHA-256 (the `blake3` wheel's SIMD code), and it
  releases the GIL as hashlib does. A new chunk of a put is proven twice, by the client over
  its bytes and by the server over filler (it does not hold the chunk, and must not show it),
  so the saving counts twice: about 1.0 CPU s/GiB (0.63 on the client, 0.37 over the server's
  cache-hot filler) of the 8.6-9.3 a `cubby put` of new data spent (bench/README.md, branch
  bigproof).
- ``sha256`` (`LEGACY`): SHA-256(nonce || bytes), what clients sent before; a prove request
  that names no algorithm is checked with it, so an older client's proofs still pass. The
  nonce comes first so that no midstate of the chunk's own hash can stand in for the bytes.

Why a name on the request and not just a switch: client and server of one release agree either
way, but a sync client may be older than its server; with the name an old client keeps proving
(and not re-sending held bytes), and a new client talking to an old server (which ignores the
field) sees its proofs refused and uploads the chunks, which the server verifies: slower,
never wrong. The chunk's *name* stays its SHA-256, and the server still verifies every uploaded
chunk's SHA-256 before storing it: only the proof changed.
"""

from __future__ import annotations

import hashlib
from typing import Final, Protocol

import blake3

from cubby.core.hashing import Buffer, update_holding

BLAKE3: Final = "blake3"
SHA256: Final = "sha256"
CURRENT: Final = BLAKE3
"""What this release's client sends, and what a proof carried without a name is checked with
anywhere but the prove request's legacy form (see `cubby.server.blocks`)."""
LEGACY: Final = SHA256
"""What a prove request that names no algorithm means (clients before ``alg`` existed)."""
ALGORITHMS: Final = (BLAKE3, SHA256)

KEY_CONTEXT: Final = "cubby 2026-12-02 proof of possession of a chunk, keyed by its nonce"
"""BLAKE3 key-derivation context: globally unique and fixed, as BLAKE3 asks of one."""


class ProofHasher(Protocol):
    """An incremental proof: fed the chunk's bytes (or filler) in pieces."""

    def update(self, data: Buffer, /) -> object: ...

    def hexdigest(self) -> str: ...


def proof_hasher(nonce: bytes, alg: str = CURRENT) -> ProofHasher:
    """A hasher that, fed a chunk's bytes, yields the proof (64 hex digits) for ``nonce``.

    Raises ValueError for an algorithm not in `ALGORITHMS` (callers validate names first)."""
    if alg == BLAKE3:
        key = blake3.blake3(nonce, derive_key_context=KEY_CONTEXT).digest()
        return blake3.blake3(key=key)
    if alg == SHA256:
        return hashlib.sha256(nonce)
    raise ValueError(f"unknown proof algorithm {alg!r}")


def proof_hex(nonce: bytes, data: Buffer, alg: str = CURRENT) -> str:
    """The proof of possession of ``data`` for ``nonce`` (the nonce's bytes, not its hex)."""
    h = proof_hasher(nonce, alg)
    update_holding(h, data)  # a small chunk's proof holding the GIL (`cubby.core.hashing`)
    return h.hexdigest()


__all__ = ["ALGORITHMS", "BLAKE3", "CURRENT", "KEY_CONTEXT", "LEGACY", "SHA256", "ProofHasher", "proof_hasher", "proof_hex"]

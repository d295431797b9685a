"""Proof of possession: challenges, and a check whose work does not depend on presence.

A client that claims a chunk the server already holds proves it has the bytes by sending a
proof over every byte of the chunk under the chunk's nonce (`cubby.core.proofs`: a keyed
BLAKE3 under a key derived from the nonce; SHA-256(nonce || bytes) for a prove request that
names no algorithm, as older clients send; the nonce first, so that no midstate of the
chunk's own hash can stand in for the bytes). A claim says which algorithm it answers
(`Claim.alg`); both cover every byte, and the check feeds the same number of bytes to the
claim's algorithm for a held chunk and for filler. The nonce is derived in two steps: a
*proof key* per (user, namespace, hour), an HMAC under the server's secret (`Challenges.key`),
and the chunk's nonce, an HMAC of (chunk, size) under that key
(`cubby.core.nonces.chunk_nonce`).

Proving before committing. The server hands each user the proof keys of its namespaces for
the current hour (the account answer: ``proof_key``, with the seconds it stays valid), so a
client can compute the nonce of any chunk itself and prove a group of new small files' chunks
*before* its first commit: prove, upload what is refused, commit (three requests, one commit
pass per file), instead of commit (only to hear which chunks are needed and their nonces),
prove, upload, commit. Why that leaks nothing more than before:

- The key gives no capability a client did not have: any client could already get the nonce
  of any (chunk, size) for itself by committing a file that names the chunk (the answer
  carries the nonce whether or not the server holds the chunk). The key only saves asking.
- A proof still needs the bytes: the nonce is bound to the user, the namespace and the hour
  (the key is), and to the chunk and its size; knowing a chunk's name (SHA-256 of its bytes)
  does not give the proof over its bytes under the nonce. A key given to another user is useless to them: the
  server derives the nonce from the *caller's* user id.
- The answer is the prove route's, unchanged: a chunk is "accepted" only for a correct proof,
  and a wrong proof and an absent chunk get the same answer ("rejected") after the same work
  (the filler hashing below, the same padding by `cubby.server.possession.RejectPacer`). A
  claim the client makes up front is checked exactly like one a commit asked for.
- What the client does with a refusal is to upload the chunk, as before. A key must not be
  stale when it is used (a proof refused only because its hour passed would make the client
  send bytes the server holds): the account answer says how long the key stays valid and the
  client asks again well before that (`cubby.client.api.ApiClient.proof_key`).
- Chunks are never sent before a proof has been refused: proving first is not uploading first
  (which would send held chunks again, and was turned back).

The commit answer names the hour (``window``) with each nonce, and a client repeats it in its
claim, so the check hashes the claimed bytes once, for that hour, when it is this hour or the
last one (a claim naming any other hour is rejected before any chunk is read; the answer
depends on nothing but the claim). A claim without a window (an older client) is checked
against both hours, as before.

The contract that matters for privacy: for a caller who cannot prove a chunk, the answer and
the work done must not depend on whether anyone holds it. So the size is bound into the nonce
(the commit request states it) and the check always hashes ``size`` bytes for each hour it
checks: the chunk's bytes when the server holds a chunk of that size, zero filler otherwise,
with the claim's algorithm either way. The algorithm is the claim's choice, never the
server's, so it says nothing about presence either.
What remains is time. Reading a held chunk depends on the block store, and hashing held bytes
takes longer than hashing the same amount of filler, which stays in the CPU's cache (about
0.08 ms per MiB with BLAKE3, 0.33 with SHA-256). All the eligible claims are read with one
`get_many` (one index lookup whatever is present, then a read per held chunk), and the caller
gets the duration of that read *and* of the hashing (`Checked.spent`), from which the server
learns a budget that covers both (`cubby.server.possession.RejectPacer`). The server pads the
answer to that budget by its own clock, started before it hands the check to a thread, so the
lookup (paid alike by held and absent claims), the read, the hashing and the way back are all
inside the padded time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from cubby.core import proofs
from cubby.core.hashing import is_chunk_name, update_holding
from cubby.core.nonces import chunk_nonce, chunk_nonce_bytes
from cubby.errors import BadRequest, CubbyError

CHALLENGE_WINDOW = 3600.0
"""A possession nonce is valid for the hour it was issued in and the next one."""
MAX_PROOF_CHUNK = 16 * 1024 * 1024
"""Largest chunk a proof may claim (the commit's own bound on a declared chunk size)."""
MAX_PROVE_BYTES = 64 * 1024 * 1024
"""Most bytes one prove request may claim in total: the check hashes every claimed byte (twice
for a claim that names no hour) whether or not the chunk is held, so this bounds the work a
request can ask for (the sync client sends windows of 16 MiB)."""
FILLER_BYTES = 1024 * 1024
PROOF_RE = re.compile(r"^[0-9a-f]{64}$")
_CURRENT = proofs.CURRENT  # `parse_claims` has a parameter named ``proofs``
_CLAIM_NEEDS = frozenset({"size", "proof"})
_CLAIM_KEYS = frozenset({"size", "proof", "window"})
"""The fields of a claim (`parse_claims`): made once, not twice per claim of a request."""

log = logging.getLogger("cubby.metadata")


class ChunkReader(Protocol):
    """What the check needs of a block store (`cubby.blockstore.base.BlockStore.get_many`)."""

    def get_many(self, names: Sequence[str]) -> dict[str, bytes]: ...


class Claim(NamedTuple):
    """One entry of a prove request, already validated: a chunk name, its size as the commit
    stated it, the proof (64 lowercase hex digits), the hour it answers and the algorithm it
    was computed with. A named tuple, not a frozen dataclass: a request makes a thousand, and
    a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) cost four times
    as much."""

    hash: str
    size: int
    proof: str
    window: int | None = None
    """The hour of the nonce (`Challenges.window`) as the commit answer named it; None: either
    of the last two."""
    alg: str = proofs.CURRENT
    """The proof's algorithm (`cubby.core.proofs.ALGORITHMS`): what this release's client
    computes, unless the request said otherwise (`parse_claims`)."""


@dataclass
class Checked:
    """What `check_claims` found: ``proven`` hashes (sorted), ``rejected`` ones, the seconds
    ``spent`` in its one batched read (lookup included) and its hashing, and, when every chunk
    it looked up was held, those (claims, bytes, seconds) in ``reads`` for the pacer to learn
    from (`cubby.server.possession.RejectPacer.record`)."""

    proven: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    reads: list[tuple[int, int, float]] = field(default_factory=list)
    spent: float = 0.0


class Challenges:
    """Nonces under one server secret (the ``settings`` row ``challenge_secret``)."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._filler = memoryview(bytes(FILLER_BYTES))
        self._keys: dict[tuple[int, int, int], bytes] = {}

    @staticmethod
    def window(at: float | None = None) -> int:
        """The hour a nonce made at ``at`` (default: now) belongs to."""
        return int((time.time() if at is None else at) // CHALLENGE_WINDOW)

    def key(self, user_id: int, ns_id: int, window: int) -> bytes:
        """The proof key of (user, namespace, hour): what a client needs to compute its own
        nonces (`cubby.core.nonces.chunk_nonce`). Remembered per (user, namespace, hour), a few
        thousand at most, so that a batch of claims costs one HMAC per chunk, not two."""
        k = (user_id, ns_id, window)
        key = self._keys.get(k)
        if key is None:
            if len(self._keys) >= 4096:
                self._keys.clear()
            key = hmac.new(self._secret, f"key:{user_id}:{ns_id}:{window}".encode(), hashlib.sha256).digest()
            self._keys[k] = key
        return key

    def seal(self, text: str) -> str:
        """A MAC of ``text`` under the server secret (hex), apart from every key and nonce
        (its own prefix): what the server hands a client to show back, unforgeable and
        unchanged (`cubby.metadata.chunks.ChunkAccess.direct_put_ticket`)."""
        return hmac.new(self._secret, f"seal:{text}".encode(), hashlib.sha256).hexdigest()

    def key_valid_for(self, window: int, now: float | None = None) -> float:
        """Seconds from ``now`` during which a proof made with the key of hour ``window`` is
        still accepted (until the end of the hour after it)."""
        return (window + 2) * CHALLENGE_WINDOW - (time.time() if now is None else now)

    def nonce(
        self, user_id: int, ns_id: int, chunk_hash: str, size: int, *, at: float | None = None, window: int | None = None
    ) -> str:
        window = self.window(at) if window is None else window
        return chunk_nonce(self.key(user_id, ns_id, window), chunk_hash, size)

    def windows(self, claim: Claim, now: float) -> tuple[int, ...]:
        """The hours ``claim`` is checked against: the one it names if that is this hour or the
        last (none otherwise), both of them if it names none."""
        current = self.window(now)
        if claim.window is None:
            return (current, current - 1)
        return (claim.window,) if claim.window in (current, current - 1) else ()

    def verify(
        self, user_id: int, ns_id: int, claim: Claim, data: bytes | None, now: float,
        windows: tuple[int, ...] | None = None,
    ) -> bool:
        """Whether ``claim.proof`` answers the nonce for ``data`` of an hour `windows` allows
        (``windows``: that answer, when the caller has it already).

        ``data`` is None when the server does not hold the chunk (or holds one of another size):
        then ``claim.size`` bytes of filler are hashed instead, so the work is the same, and the
        answer is False. Every allowed hour is hashed and compared in constant time."""
        ok = False
        for window in self.windows(claim, now) if windows is None else windows:
            nonce = chunk_nonce_bytes(self.key(user_id, ns_id, window), claim.hash, claim.size)
            ok |= hmac.compare_digest(self._digest(nonce, data, claim.size, claim.alg), claim.proof)
        return ok and data is not None

    def _digest(self, nonce: bytes, data: bytes | None, size: int, alg: str = proofs.CURRENT) -> str:
        """The proof of ``data`` for ``nonce`` with ``alg``, or of ``size`` zero bytes when
        ``data`` is None: the same function over the same number of bytes either way."""
        h = proofs.proof_hasher(nonce, alg)
        if data is not None:
            update_holding(h, data)
            return h.hexdigest()
        for offset in range(0, size, FILLER_BYTES):
            update_holding(h, self._filler[: min(FILLER_BYTES, size - offset)])
        return h.hexdigest()


def check_claims(
    challenges: Challenges,
    user_id: int,
    ns_id: int,
    claims: Sequence[Claim],
    reader: ChunkReader,
    eligible: Callable[[str], bool] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Checked:
    """Check every claim, in hash order. A chunk is read only when ``eligible`` says it may be
    deduplicated for this caller (all of them with global dedup; with per-user dedup, those the
    user can already read; None: all): any other is treated exactly like one the server lacks."""
    out = Checked()
    now = time.time()
    ordered = sorted(claims, key=lambda c: c.hash)
    hours = [challenges.windows(c, now) for c in ordered]  # once per claim: read and verify use it
    # A claim naming a stale hour is refused unread: that depends on the claim alone.
    wanted = [c.hash for c, w in zip(ordered, hours) if w and (eligible is None or eligible(c.hash))]
    held: dict[str, bytes] = {}
    start = clock()
    if wanted:
        try:
            held = reader.get_many(wanted)
        except CubbyError as exc:
            # Every claim of the request is refused and its chunks are uploaded again, which
            # mends nothing while the index keeps the unreadable copy: the operator must hear.
            log.warning(
                "held chunks could not be read to check proofs; run cubby admin check",
                extra={"code": exc.code, "error": exc.message},
            )
            held = {}
    for claim, w in zip(ordered, hours):
        data = held.get(claim.hash)
        if data is not None and len(data) != claim.size:
            data = None
        ok = challenges.verify(user_id, ns_id, claim, data, now, w)
        (out.proven if ok else out.rejected).append(claim.hash)
    # The hashing is timed with the read: it does the same work for held bytes and for filler,
    # but not in the same time (filler stays in the CPU's cache), so it is padded too.
    out.spent = clock() - start
    if wanted and len(held) == len(wanted):
        # Only a batch of held chunks alone says what held checks cost; a mixed batch's
        # time is mostly the lookup of absent ones, and would inflate the learnt rate.
        out.reads.append((len(wanted), sum(len(d) for d in held.values()), out.spent))
    return out


def parse_alg(value: object, *, present: bool = True) -> str:
    """The proof algorithm a prove request names in ``"alg"``: a field not ``present`` means
    `cubby.core.proofs.LEGACY`, what clients sent before requests named one; anything but a
    known name (null included) is a `BadRequest` (before any lookup, so the answer depends on
    the request alone)."""
    if not present:
        return proofs.LEGACY
    if not isinstance(value, str) or value not in proofs.ALGORITHMS:
        raise BadRequest(f"field 'alg' must be one of {', '.join(proofs.ALGORITHMS)}", field="alg")
    return str(value)


def parse_claims(proofs: object, *, max_entries: int, alg: str = _CURRENT) -> list[Claim]:
    """Validate a prove request's ``proofs`` object: ``{hash: {"size": n, "proof": hex}}``,
    each with the ``"window"`` (hour) its commit answer named, optionally; every claim answers
    with ``alg`` (the request's `parse_alg`).

    Everything is checked before any lookup, so malformed input costs the server nothing and
    its answer (a `BadRequest`) cannot depend on what the server holds."""
    shape = 'an object {hash: {"size": bytes, "proof": 64 hex digits, "window": hour (optional)}}'
    if not isinstance(proofs, dict) or len(proofs) > max_entries:
        raise BadRequest(f"field 'proofs' must be {shape} of at most {max_entries} entries", field="proofs")
    claims: list[Claim] = []
    total = 0
    for h, v in proofs.items():
        if not is_chunk_name(h):
            raise BadRequest("each key of 'proofs' must be a lowercase hex SHA-256 (64 characters)", field="proofs")
        if not isinstance(v, dict) or not _CLAIM_NEEDS <= v.keys() <= _CLAIM_KEYS:
            raise BadRequest(f"field 'proofs' must be {shape} (the size is the one the commit stated)", field="proofs")
        size, proof, window = v["size"], v["proof"], v.get("window")
        # ``type(x) is int``: a bool (or another subclass of int) is refused, as JSON's ints are ints
        if window is not None and (type(window) is not int or not 0 <= window < 2**40):
            raise BadRequest("each proof's 'window' must be the hour its commit answer named", field="proofs")
        if type(size) is not int or not 1 <= size <= MAX_PROOF_CHUNK:
            raise BadRequest(f"each proof's 'size' must be an integer from 1 to {MAX_PROOF_CHUNK}", field="proofs")
        if not isinstance(proof, str) or not PROOF_RE.match(proof := proof.lower()):
            raise BadRequest("each proof must be 64 hex digits (see the request's 'alg')", field="proofs")
        total += size
        if total > MAX_PROVE_BYTES:
            raise BadRequest(
                f"one prove request may claim at most {MAX_PROVE_BYTES} bytes; send fewer chunks per request",
                field="proofs",
            )
        claims.append(Claim(h, size, proof, window, alg))
    return claims


__all__ = [
    "CHALLENGE_WINDOW",
    "MAX_PROVE_BYTES",
    "Challenges",
    "Checked",
    "ChunkReader",
    "Claim",
    "check_claims",
    "parse_alg",
    "parse_claims",
]

"""`cubby.metadata.possession` without a server: which hours a claim is checked for, that a
claim naming its hour costs one hash, that no claim passes without the chunk's bytes, and
that each proof algorithm (`cubby.core.proofs`) keeps those promises."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Sequence

import blake3
import pytest

from cubby.core import proofs
from cubby.core.nonces import chunk_nonce, chunk_nonce_bytes
from cubby.errors import BadRequest
from cubby.metadata.possession import (
    CHALLENGE_WINDOW,
    Challenges,
    Claim,
    check_claims,
    parse_alg,
    parse_claims,
)

SECRET = bytes(range(32))
NOW = 1_800_000_000.0


class Reader:
    """A block store of some chunks that records what it was asked for."""

    def __init__(self, chunks: dict[str, bytes]) -> None:
        self.chunks = chunks
        self.asked: list[str] = []

    def get_many(self, names: Sequence[str]) -> dict[str, bytes]:
        self.asked.extend(names)
        return {n: self.chunks[n] for n in names if n in self.chunks}


class CountingChallenges(Challenges):
    """Counts the bytes the check hashes (the work a claim costs the server)."""

    hashed = 0

    def _digest(self, nonce: bytes, data: bytes | None, size: int, alg: str = proofs.CURRENT) -> str:
        self.hashed += size
        return super()._digest(nonce, data, size, alg)


def _proof(nonce: str, data: bytes, alg: str = proofs.CURRENT) -> str:
    return proofs.proof_hex(bytes.fromhex(nonce), data, alg)


ALGS = pytest.mark.parametrize("alg", proofs.ALGORITHMS)


def test_a_claim_is_checked_for_the_hour_it_names_or_both_when_it_names_none() -> None:
    ch = Challenges(SECRET)
    hour = ch.window(NOW)
    assert ch.windows(Claim("a" * 64, 1, "0" * 64, hour), NOW) == (hour,)
    assert ch.windows(Claim("a" * 64, 1, "0" * 64, hour - 1), NOW) == (hour - 1,)
    assert ch.windows(Claim("a" * 64, 1, "0" * 64, None), NOW) == (hour, hour - 1)
    assert ch.windows(Claim("a" * 64, 1, "0" * 64, hour - 2), NOW) == ()
    assert ch.windows(Claim("a" * 64, 1, "0" * 64, hour + 1), NOW) == ()
    assert ch.nonce(1, 2, "a" * 64, 1, at=NOW) == ch.nonce(1, 2, "a" * 64, 1, window=hour)
    assert ch.nonce(1, 2, "a" * 64, 1, at=NOW - CHALLENGE_WINDOW) == ch.nonce(1, 2, "a" * 64, 1, window=hour - 1)


@ALGS
def test_naming_the_hour_halves_the_hashing_and_held_or_absent_costs_the_same(alg: str) -> None:
    data = os.urandom(100_000)
    held = hashlib.sha256(data).hexdigest()
    absent = hashlib.sha256(b"absent").hexdigest()
    for window, per_claim in ((None, 2), ("named", 1)):
        costs = []
        for h in (held, absent):
            ch = CountingChallenges(SECRET)
            hour = ch.window()
            nonce = ch.nonce(7, 9, h, len(data), window=hour)
            claim = Claim(h, len(data), _proof(nonce, data, alg), hour if window else None, alg)
            got = check_claims(ch, 7, 9, [claim], Reader({held: data}))
            assert (got.proven, got.rejected) == (([held], []) if h == held else ([], [absent]))
            costs.append(ch.hashed)
        assert costs == [per_claim * len(data)] * 2


@ALGS
def test_no_claim_passes_without_the_bytes(alg: str) -> None:
    """A guess, a proof over filler (what the server hashes for an absent chunk), the right
    bytes for a stale hour, another user's nonce, another chunk of the same size, the proof of
    the other algorithm: all refused, and a stale hour is not read."""
    data = os.urandom(70_000)
    h = hashlib.sha256(data).hexdigest()
    ch = Challenges(SECRET)
    hour = ch.window()
    nonce = ch.nonce(7, 9, h, len(data), window=hour)
    stale = ch.nonce(7, 9, h, len(data), window=hour - 2)
    others = ch.nonce(8, 9, h, len(data), window=hour)
    reader = Reader({h: data})
    other_alg = next(a for a in proofs.ALGORITHMS if a != alg)
    claims = {
        "guess": Claim(h, len(data), "ab" * 32, hour, alg),
        "filler": Claim(h, len(data), _proof(nonce, bytes(len(data)), alg), hour, alg),
        "stale": Claim(h, len(data), _proof(stale, data, alg), hour - 2, alg),
        "other user": Claim(h, len(data), _proof(others, data, alg), hour, alg),
        "wrong hour named": Claim(h, len(data), _proof(nonce, data, alg), hour - 1, alg),
        "another chunk of the same size": Claim(h, len(data), _proof(nonce, os.urandom(len(data)), alg), hour, alg),
        "the same bytes but one": Claim(h, len(data), _proof(nonce, data[:-1] + bytes([data[-1] ^ 1]), alg), hour, alg),
        "the other algorithm's proof": Claim(h, len(data), _proof(nonce, data, other_alg), hour, alg),
        "unkeyed hash of the bytes": Claim(h, len(data), blake3.blake3(data).hexdigest(), hour, alg),
    }
    for name, claim in claims.items():
        reader.asked.clear()
        got = check_claims(ch, 7, 9, [claim], reader)
        assert got.proven == [] and got.rejected == [h], name
        assert reader.asked == ([] if name == "stale" else [h]), name
    # A filler proof for a chunk nobody holds is refused too (the filler is what is hashed).
    absent = hashlib.sha256(b"nobody").hexdigest()
    filler = _proof(ch.nonce(7, 9, absent, 5, window=hour), bytes(5), alg)
    assert check_claims(ch, 7, 9, [Claim(absent, 5, filler, hour, alg)], reader).rejected == [absent]
    assert check_claims(ch, 7, 9, [Claim(h, len(data), _proof(nonce, data, alg), hour, alg)], reader).proven == [h]


@ALGS
def test_held_and_absent_chunks_feed_the_hasher_the_same_bytes(alg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not just the same ``size`` passed along: the same number of bytes, in pieces of the same
    sizes, reach the proof's hasher whether the chunk is held (its bytes) or not (filler), for
    a chunk larger than the filler buffer, so the work cannot tell the two apart."""
    fed: list[list[int]] = []
    real = proofs.proof_hasher

    class Counting:
        def __init__(self, nonce: bytes, alg: str) -> None:
            self.inner = real(nonce, alg)
            self.pieces: list[int] = []
            fed.append(self.pieces)

        def update(self, data: bytes | memoryview) -> None:
            self.pieces.append(len(data))
            self.inner.update(data)

        def hexdigest(self) -> str:
            return self.inner.hexdigest()

    monkeypatch.setattr(proofs, "proof_hasher", Counting)
    data = os.urandom(3 * 1024 * 1024 + 12345)
    held = hashlib.sha256(data).hexdigest()
    absent = hashlib.sha256(b"absent").hexdigest()
    ch = Challenges(SECRET)
    hour = ch.window()
    totals = []
    for h in (held, absent):
        fed.clear()
        claim = Claim(h, len(data), _proof(ch.nonce(7, 9, h, len(data), window=hour), data, alg), hour, alg)
        fed.clear()  # the client's own proof above is not the server's work
        got = check_claims(ch, 7, 9, [claim], Reader({held: data}))
        assert got.proven == ([held] if h == held else [])
        assert len(fed) == 1
        totals.append(sum(fed[0]))
    assert totals == [len(data), len(data)]


def test_the_blake3_proof_is_keyed_blake3_under_a_key_derived_from_the_nonce() -> None:
    """The wire format, pinned: a client written from the documentation (or an older cubby)
    computes the same proofs."""
    nonce, data = bytes(range(16)), b"cubby" * 1000
    key = blake3.blake3(nonce, derive_key_context=proofs.KEY_CONTEXT).digest()
    assert proofs.proof_hex(nonce, data, proofs.BLAKE3) == blake3.blake3(data, key=key).hexdigest()
    assert proofs.proof_hex(nonce, data, proofs.SHA256) == hashlib.sha256(nonce + data).hexdigest()
    assert proofs.proof_hex(nonce, data) == proofs.proof_hex(nonce, data, proofs.CURRENT) == proofs.proof_hex(nonce, data, "blake3")
    # The same bytes under another nonce give an unrelated proof.
    assert proofs.proof_hex(bytes(16), data) != proofs.proof_hex(nonce, data)
    with pytest.raises(ValueError):
        proofs.proof_hasher(nonce, "md5")


def test_the_nonce_is_the_hmac_of_name_and_size_under_the_proof_key() -> None:
    """The wire format of a nonce, pinned (the client computes it from the key in the account
    answer; the server checks with the bytes form, without the hex round trip)."""
    key = bytes(range(32))
    for h, size in (("ab" * 32, 1), (hashlib.sha256(b"x").hexdigest(), 4096), ("00" * 32, 16 * 1024 * 1024)):
        expected = hmac.new(key, f"{h}:{size}".encode(), hashlib.sha256).hexdigest()[:32]
        assert chunk_nonce(key, h, size) == expected
        assert chunk_nonce_bytes(key, h, size) == bytes.fromhex(expected)
    ch = Challenges(SECRET)
    hour = ch.window(NOW)
    assert ch.nonce(7, 9, "ab" * 32, 5, window=hour) == chunk_nonce(ch.key(7, 9, hour), "ab" * 32, 5)


def test_a_claim_whose_size_or_hour_is_not_a_plain_integer_is_refused() -> None:
    h = hashlib.sha256(b"x").hexdigest()
    for bad in ({"size": True, "proof": "ab" * 32}, {"size": 1.0, "proof": "ab" * 32}, {"size": "1", "proof": "ab" * 32},
                {"size": 1, "proof": "ab" * 32, "window": True}, {"size": 1, "proof": "ab" * 32, "window": 1.5}):
        with pytest.raises(BadRequest):
            parse_claims({h: bad}, max_entries=10)
    (claim,) = parse_claims({h: {"size": 1, "proof": "AB" * 32, "window": 5}}, max_entries=10)
    assert claim == Claim(h, 1, "ab" * 32, 5, proofs.CURRENT) and claim.window == 5 and claim.proof == "ab" * 32


def test_a_request_names_its_algorithm_or_gets_the_legacy_one() -> None:
    assert parse_alg(None, present=False) == proofs.LEGACY == "sha256"
    assert parse_alg("blake3") == proofs.BLAKE3
    for bad in ("BLAKE3", "md5", 3, "", ["blake3"], None):  # a null "alg" is not an absent one
        with pytest.raises(BadRequest):
            parse_alg(bad)
    h = hashlib.sha256(b"x").hexdigest()
    (claim,) = parse_claims({h: {"size": 1, "proof": "ab" * 32}}, max_entries=10, alg=proofs.SHA256)
    assert claim.alg == proofs.SHA256
    (claim,) = parse_claims({h: {"size": 1, "proof": "ab" * 32}}, max_entries=10)
    assert claim.alg == proofs.CURRENT


def test_the_time_the_answer_is_padded_for_covers_the_hashing_held_or_absent() -> None:
    """Hashing held bytes is slower than hashing cache-hot filler, so `Checked.spent` (what
    `RejectPacer` pads to its budget) must span the hashing as well as the read: the clock's
    second reading comes after every claim was hashed, for a held and for an absent chunk."""
    data = os.urandom(50_000)
    held = hashlib.sha256(data).hexdigest()
    absent = hashlib.sha256(b"absent").hexdigest()
    for h in (held, absent):
        ch = CountingChallenges(SECRET)
        hour = ch.window()
        claims = [Claim(h, len(data), _proof(ch.nonce(7, 9, h, len(data), window=hour), data), hour)]
        seen: list[int] = []

        def clock(ch: CountingChallenges = ch, seen: list[int] = seen) -> float:
            seen.append(ch.hashed)  # bytes hashed when the clock is read
            return float(len(seen))

        got = check_claims(ch, 7, 9, claims, Reader({held: data}), clock=clock)
        assert seen == [0, len(data)], h
        assert got.spent == 1.0
        assert got.reads == ([(1, len(data), 1.0)] if h == held else [])

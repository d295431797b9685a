"""`cubby.metadata.possession` without a server: which hours a claim is checked for, that a
claim naming its hour costs one hash, and that no claim passes without the chunk's bytes."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from cubby.metadata.possession import CHALLENGE_WINDOW, Challenges, Claim, check_claims

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

    def _digest(self, nonce: bytes, data: bytes | None, size: int) -> str:
        self.hashed += size
        return super()._digest(nonce, data, size)


def _proof(nonce: str, data: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(nonce) + data).hexdigest()


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


def test_naming_the_hour_halves_the_hashing_and_held_or_absent_costs_the_same() -> None:
    data = os.urandom(100_000)
    held = hashlib.sha256(data).hexdigest()
    absent = hashlib.sha256(b"absent").hexdigest()
    for window, per_claim in ((None, 2), ("named", 1)):
        costs = []
        for h in (held, absent):
            ch = CountingChallenges(SECRET)
            hour = ch.window()
            nonce = ch.nonce(7, 9, h, len(data), window=hour)
            claim = Claim(h, len(data), _proof(nonce, data), hour if window else None)
            got = check_claims(ch, 7, 9, [claim], Reader({held: data}))
            assert (got.proven, got.rejected) == (([held], []) if h == held else ([], [absent]))
            costs.append(ch.hashed)
        assert costs == [per_claim * len(data)] * 2


def test_no_claim_passes_without_the_bytes() -> None:
    """A guess, a proof over filler (what the server hashes for an absent chunk), the right
    bytes for a stale hour, another user's nonce: all refused, and a stale hour is not read."""
    data = os.urandom(70_000)
    h = hashlib.sha256(data).hexdigest()
    ch = Challenges(SECRET)
    hour = ch.window()
    nonce = ch.nonce(7, 9, h, len(data), window=hour)
    stale = ch.nonce(7, 9, h, len(data), window=hour - 2)
    others = ch.nonce(8, 9, h, len(data), window=hour)
    reader = Reader({h: data})
    claims = {
        "guess": Claim(h, len(data), "ab" * 32, hour),
        "filler": Claim(h, len(data), _proof(nonce, bytes(len(data))), hour),
        "stale": Claim(h, len(data), _proof(stale, data), hour - 2),
        "other user": Claim(h, len(data), _proof(others, data), hour),
        "wrong hour named": Claim(h, len(data), _proof(nonce, data), hour - 1),
    }
    for name, claim in claims.items():
        reader.asked.clear()
        got = check_claims(ch, 7, 9, [claim], reader)
        assert got.proven == [] and got.rejected == [h], name
        assert reader.asked == ([] if name == "stale" else [h]), name
    # A filler proof for a chunk nobody holds is refused too (the filler is what is hashed).
    absent = hashlib.sha256(b"nobody").hexdigest()
    filler = _proof(ch.nonce(7, 9, absent, 5, window=hour), bytes(5))
    assert check_claims(ch, 7, 9, [Claim(absent, 5, filler, hour)], reader).rejected == [absent]
    assert check_claims(ch, 7, 9, [Claim(h, len(data), _proof(nonce, data), hour)], reader).proven == [h]

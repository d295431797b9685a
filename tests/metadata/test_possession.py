"""`check_claims` reads held chunks in one batch: one presence lookup and one `get_many`,
whatever the number of claims, and a chunk that vanishes between the two counts as absent."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence

from cubby.blockstore.memory import MemoryBlockStore
from cubby.metadata.possession import Challenges, Claim, check_claims


class CountingReader:
    """A memory block store that counts the calls the check makes (behaviour by wrapping);
    ``vanish`` is deleted after the presence lookup, as a collection in between would."""

    def __init__(self, inner: MemoryBlockStore, vanish: str | None = None) -> None:
        self.inner = inner
        self.vanish = vanish
        self.calls: list[str] = []

    def get(self, name: str) -> bytes:
        self.calls.append("get")
        return self.inner.get(name)

    def get_many(self, names: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        self.calls.append("get_many")
        return self.inner.get_many(names)

    def present(self, names: Iterable[str]) -> set[str]:
        self.calls.append("present")
        found = self.inner.present(names)
        if self.vanish is not None:
            self.inner.delete(self.vanish)
        return found


def claims_for(challenges: Challenges, chunks: list[bytes]) -> list[Claim]:
    out = []
    for data in chunks:
        h = hashlib.sha256(data).hexdigest()
        nonce = bytes.fromhex(challenges.nonce(1, 2, h, len(data)))
        out.append(Claim(h, len(data), hashlib.sha256(nonce + data).hexdigest()))
    return out


def test_held_chunks_are_read_with_one_lookup_and_one_batched_read():
    challenges = Challenges(b"k" * 32)
    held = [os.urandom(70_000) for _ in range(30)]
    absent = [os.urandom(1000) for _ in range(20)]
    store = MemoryBlockStore()
    store.put_many([(hashlib.sha256(d).hexdigest(), d) for d in held])
    reader = CountingReader(store)
    checked = check_claims(challenges, 1, 2, claims_for(challenges, held + absent), reader)
    assert reader.calls == ["present", "get_many"]
    assert checked.proven == sorted(hashlib.sha256(d).hexdigest() for d in held)
    assert checked.rejected == sorted(hashlib.sha256(d).hexdigest() for d in absent)
    assert [n for n, _ in checked.reads] == [30 * 70_000]


def test_a_chunk_collected_between_lookup_and_read_is_rejected_and_the_rest_proven():
    challenges = Challenges(b"k" * 32)
    held = [os.urandom(5000) for _ in range(5)]
    store = MemoryBlockStore()
    store.put_many([(hashlib.sha256(d).hexdigest(), d) for d in held])
    gone = hashlib.sha256(held[2]).hexdigest()
    checked = check_claims(challenges, 1, 2, claims_for(challenges, held), CountingReader(store, vanish=gone))
    assert checked.rejected == [gone]
    assert len(checked.proven) == 4

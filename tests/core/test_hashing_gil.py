"""Small buffers hashed holding the GIL (`cubby.core.hashing.update_holding`), and nonces made
by an HMAC that keeps it (`cubby.core.nonces`): the same digests as before, fed in pieces
short enough that hashlib and blake3 do not let go of the GIL (which a thread then waits up to
5 ms to win back while another runs Python)."""

from __future__ import annotations

import hashlib
import hmac
import os

import blake3
from hypothesis import given
from hypothesis import strategies as st

from cubby.core import proofs
from cubby.core.hashing import GIL_PIECE, HOLD_BELOW, Buffer, sha256_hex, update_holding, verify_chunk
from cubby.core.nonces import chunk_nonce, chunk_nonce_bytes


class Recorder:
    """A hasher that notes the length of each update."""

    def __init__(self) -> None:
        self.inner = hashlib.sha256()
        self.sizes: list[int] = []

    def update(self, data: Buffer, /) -> None:
        self.sizes.append(len(data))
        self.inner.update(data)


def test_a_small_chunk_is_fed_in_pieces_the_libraries_hash_holding_the_gil() -> None:
    data = os.urandom(4096)
    r = Recorder()
    update_holding(r, data)
    assert max(r.sizes) <= GIL_PIECE < 2048
    assert sum(r.sizes) == 4096
    assert r.inner.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_large_buffer_goes_whole_so_that_other_threads_run_while_it_is_hashed() -> None:
    for n in (HOLD_BELOW, 1 << 20):
        r = Recorder()
        update_holding(r, bytes(n))
        assert r.sizes == [n]


@given(st.integers(min_value=0, max_value=3 * HOLD_BELOW // 2))
def test_names_and_proofs_are_the_digests_of_the_whole_buffer(n: int) -> None:
    data = os.urandom(n)
    assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
    verify_chunk(hashlib.sha256(data).hexdigest(), memoryview(data))
    nonce = os.urandom(16)
    key = blake3.blake3(nonce, derive_key_context=proofs.KEY_CONTEXT).digest()
    assert proofs.proof_hex(nonce, data) == blake3.blake3(data, key=key).hexdigest()
    assert proofs.proof_hex(nonce, data, proofs.SHA256) == hashlib.sha256(nonce + data).hexdigest()


def test_nonces_are_the_one_shot_hmac_clients_and_servers_computed_before() -> None:
    """Clients of earlier releases computed nonces with ``hmac.digest``; a server must still
    agree with them, and they with it."""
    key = os.urandom(32)
    for i in range(50):
        name, size = hashlib.sha256(str(i).encode()).hexdigest(), 4096 + i
        before = hmac.digest(key, f"{name}:{size}".encode(), hashlib.sha256)[:16]
        assert chunk_nonce_bytes(key, name, size) == before
        assert chunk_nonce(key, name, size) == before.hex()

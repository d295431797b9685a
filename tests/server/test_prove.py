"""Proof of possession through real HTTP: no answer depends on whether anyone holds a chunk,
and ``--dedup-scope user`` keeps one user's chunks out of another's dedup."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cubby.client.api import ApiClient, commit_body
from cubby.client.upload import upload_file
from cubby.core import proofs
from cubby.core.chunking import chunk_bytes
from cubby.model import ChunkRef
from tests.helpers.live_server import LiveServer


def _held_and_absent(users) -> tuple[str, str, int, int]:
    """A chunk Alice stored (that Bob cannot prove) and one nobody stored, of the same size,
    and Bob's root namespace."""
    data = os.urandom(200_000)  # below FastCDC's minimum chunk size: always one chunk
    (chunk,) = chunk_bytes(data)
    ns_a = users.alice.account()["root_ns"]
    users.alice.upload_chunks(ns_a, [(chunk.hash, chunk.data)])
    assert users.alice.commit("/held.bin", len(data), [ChunkRef(chunk.hash, chunk.length)]).committed
    absent = hashlib.sha256(b"nobody stored this " + os.urandom(8)).hexdigest()
    return chunk.hash, absent, chunk.length, users.bob.account()["root_ns"]


MALFORMED = {
    "non-hex proof": lambda size: {"size": size, "proof": "zz" * 32},
    "non-ASCII proof": lambda size: {"size": size, "proof": "\u00e9" * 64},
    "short proof": lambda size: {"size": size, "proof": "ab" * 16},
    "proof not a string": lambda size: {"size": size, "proof": 7},
    "old form without a size": lambda size: "00" * 32,
    "size zero": lambda size: {"size": 0, "proof": "00" * 32},
    "size a boolean": lambda size: {"size": True, "proof": "00" * 32},
    "size far too big": lambda size: {"size": 2**40, "proof": "00" * 32},
    "extra field": lambda size: {"size": size, "proof": "00" * 32, "nonce": "00"},
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_proofs_get_the_same_400_for_held_and_absent_chunks(users, case):
    held, absent, size, ns_b = _held_and_absent(users)
    answers = []
    with users.raw(users.bob_token) as bob:
        for h in (held, absent):
            r = bob.post("/api/v1/blocks/prove", json={"ns_id": ns_b, "proofs": {h: MALFORMED[case](size)}})
            assert r.status_code == 400, r.text
            answers.append(r.json())
    assert answers[0] == answers[1]
    assert answers[0]["code"] == "bad_request"


def test_too_many_entries_bad_keys_and_too_many_bytes_are_400(users):
    held, _, size, ns_b = _held_and_absent(users)
    with users.raw(users.bob_token) as bob:
        def prove(proofs):
            return bob.post("/api/v1/blocks/prove", json={"ns_id": ns_b, "proofs": proofs})

        many = {hashlib.sha256(str(i).encode()).hexdigest(): {"size": 1, "proof": "00" * 32} for i in range(4097)}
        assert prove(many).status_code == 400
        assert prove({held.upper(): {"size": size, "proof": "00" * 32}}).status_code == 400
        assert prove({"xyz": {"size": size, "proof": "00" * 32}}).status_code == 400
        big = {hashlib.sha256(str(i).encode()).hexdigest(): {"size": 16 * 1024 * 1024, "proof": "00" * 32} for i in range(5)}
        r = prove(big)
        assert r.status_code == 400 and "at most" in r.json()["message"]
        assert prove([held]).status_code == 400
        # A namespace that is not the caller's: refused before any chunk is looked up.
        r = bob.post("/api/v1/blocks/prove", json={"ns_id": 2**40, "proofs": {held: {"size": size, "proof": "00" * 32}}})
        assert r.status_code == 404


def test_a_wrong_proof_is_rejected_alike_for_held_and_absent(users):
    held, absent, size, ns_b = _held_and_absent(users)
    with users.raw(users.bob_token) as bob:
        answers = []
        for h in (held, absent):
            r = bob.post("/api/v1/blocks/prove", json={"ns_id": ns_b, "proofs": {h: {"size": size, "proof": "AB" * 32}}})
            assert r.status_code == 200, r.text
            answers.append(r.json())
    assert answers == [{"accepted": [], "rejected": [held]}, {"accepted": [], "rejected": [absent]}]


def test_a_proof_naming_the_commit_s_hour_is_checked_for_it_and_needs_the_bytes(users):
    """The commit answer names the hour of each nonce; a claim that repeats it is accepted when
    the proof is over the chunk's bytes, and refused when it is not (a guess, or filler: a
    client that does not hold the bytes), alike for a held and an absent chunk."""
    data = os.urandom(200_000)
    (chunk,) = chunk_bytes(data)
    ns_a, ns_b = users.alice.account()["root_ns"], users.bob.account()["root_ns"]
    users.alice.upload_chunks(ns_a, [(chunk.hash, chunk.data)])
    absent_data = os.urandom(200_000)
    (absent,) = chunk_bytes(absent_data)
    answer = users.bob.commit_batch([
        commit_body("/copy.bin", len(data), [ChunkRef(chunk.hash, chunk.length)], None, None),
        commit_body("/new.bin", len(absent_data), [ChunkRef(absent.hash, absent.length)], None, None),
    ])
    needed = {n.hash: n for res in answer for n in res.needed}
    assert set(needed) == {chunk.hash, absent.hash}
    assert all(isinstance(n.window, int) for n in needed.values())

    def proof(nonce: str, body: bytes) -> str:
        return hashlib.sha256(bytes.fromhex(nonce) + body).hexdigest()

    with users.raw(users.bob_token) as bob:
        def prove(h: str, size: int, value: str, window: int) -> dict:
            r = bob.post("/api/v1/blocks/prove", json={
                "ns_id": ns_b, "proofs": {h: {"size": size, "proof": value, "window": window}}})
            assert r.status_code == 200, r.text
            return r.json()

        for n, size in ((needed[chunk.hash], chunk.length), (needed[absent.hash], absent.length)):
            assert prove(n.hash, size, proof(n.nonce, bytes(size)), n.window) == {"accepted": [], "rejected": [n.hash]}
            assert prove(n.hash, size, "ab" * 32, n.window) == {"accepted": [], "rejected": [n.hash]}
            # The right bytes, but an hour the nonce was not made for: refused.
            assert prove(n.hash, size, proof(n.nonce, data), n.window - 1)["accepted"] == []
        assert prove(chunk.hash, chunk.length, proof(needed[chunk.hash].nonce, data), needed[chunk.hash].window) == {
            "accepted": [chunk.hash], "rejected": []}
        r = bob.post("/api/v1/blocks/prove", json={
            "ns_id": ns_b, "proofs": {chunk.hash: {"size": chunk.length, "proof": "ab" * 32, "window": "now"}}})
        assert r.status_code == 400
    assert users.bob.commit("/copy.bin", len(data), [ChunkRef(chunk.hash, chunk.length)]).committed


def test_a_request_names_its_proof_algorithm_and_one_without_a_name_is_sha256(users):
    """The client names ``blake3`` (`cubby.core.proofs`); a request without ``alg`` (an older
    client) is checked as SHA-256(nonce || bytes); the proof of one algorithm does not pass for
    the other; an unknown name is the same 400 for a held and an absent chunk."""
    data = os.urandom(200_000)
    (chunk,) = chunk_bytes(data)
    ns_a, ns_b = users.alice.account()["root_ns"], users.bob.account()["root_ns"]
    users.alice.upload_chunks(ns_a, [(chunk.hash, chunk.data)])
    (res,) = users.bob.commit_batch([commit_body("/alg.bin", len(data), [ChunkRef(chunk.hash, chunk.length)], None, None)])
    (n,) = res.needed
    nonce = bytes.fromhex(n.nonce)
    absent = hashlib.sha256(b"nobody stored this " + os.urandom(8)).hexdigest()
    with users.raw(users.bob_token) as bob:
        def prove(alg: str | None, value: str, h: str = chunk.hash):
            body = {"ns_id": ns_b, "proofs": {h: {"size": chunk.length, "proof": value, "window": n.window}}}
            if alg is not None:
                body["alg"] = alg
            return bob.post("/api/v1/blocks/prove", json=body)

        refused = {"accepted": [], "rejected": [chunk.hash]}
        assert prove("blake3", proofs.proof_hex(nonce, data, proofs.SHA256)).json() == refused
        assert prove(None, proofs.proof_hex(nonce, data, proofs.BLAKE3)).json() == refused
        assert prove("sha256", proofs.proof_hex(nonce, os.urandom(len(data)), proofs.SHA256)).json() == refused
        assert prove("blake3", proofs.proof_hex(nonce, os.urandom(len(data)), proofs.BLAKE3)).json() == refused
        bad = [prove(alg, "ab" * 32, h) for h in (chunk.hash, absent) for alg in ("md5", 7)]
        assert {r.status_code for r in bad} == {400}
        assert bad[0].json() == bad[2].json() and bad[1].json() == bad[3].json()
        # A null "alg" is not an absent one (which means the legacy SHA-256): refused alike.
        null = [bob.post("/api/v1/blocks/prove", json={"ns_id": ns_b, "alg": None, "proofs": {h: {"size": chunk.length, "proof": "ab" * 32}}})
                for h in (chunk.hash, absent)]
        assert [r.status_code for r in null] == [400, 400] and null[0].json() == null[1].json()
        assert prove(None, proofs.proof_hex(nonce, data, proofs.SHA256)).json() == {"accepted": [chunk.hash], "rejected": []}
        assert prove("blake3", proofs.proof_hex(nonce, data, proofs.BLAKE3)).json() == {"accepted": [chunk.hash], "rejected": []}
    # And the client's own path (`ApiClient.prove`, which names blake3) proves it too.
    accepted, rejected = users.bob.prove(ns_b, {chunk.hash: (chunk.length, proofs.proof_hex(nonce, data))}, {chunk.hash: n.window})
    assert (accepted, rejected) == ([chunk.hash], [])
    assert users.bob.commit("/alg.bin", len(data), [ChunkRef(chunk.hash, chunk.length)]).committed


def test_proofs_made_with_the_account_s_key_before_any_commit(users):
    """The account answer gives a proof key per writable namespace; with it the client makes
    its own nonces and proves chunks no commit has named yet. A correct proof of a held chunk
    is accepted (and the chunk is then usable without being sent); a wrong proof of that held
    chunk, the right bytes under another user's key, and a chunk nobody stored all get the
    same answer, "rejected", which is what tells the client to upload."""
    from cubby.core.nonces import chunk_nonce

    held, absent, size, ns_b = _held_and_absent(users)
    held_data = users.alice.fetch_chunks([held])
    (_, data), = list(held_data)
    keys = {n["ns_id"]: n["proof_key"] for n in users.bob.account()["namespaces"]}
    key = keys[ns_b]
    assert key["valid_for"] > 3600 - 5 and set(key) == {"window", "key", "valid_for"}
    alice_key = users.alice.account()["namespaces"][0]["proof_key"]
    assert alice_key["key"] != key["key"]

    def claim(h: str, body: bytes, k: dict) -> dict:
        nonce = chunk_nonce(bytes.fromhex(k["key"]), h, size)
        proof = hashlib.sha256(bytes.fromhex(nonce) + body).hexdigest()
        return {h: {"size": size, "proof": proof, "window": k["window"]}}

    with users.raw(users.bob_token) as bob:
        def prove(proofs: dict) -> dict:
            r = bob.post("/api/v1/blocks/prove", json={"ns_id": ns_b, "proofs": proofs})
            assert r.status_code == 200, r.text
            return r.json()

        assert prove(claim(held, bytes(size), key)) == {"accepted": [], "rejected": [held]}
        assert prove(claim(absent, bytes(size), key)) == {"accepted": [], "rejected": [absent]}
        assert prove(claim(held, data, alice_key)) == {"accepted": [], "rejected": [held]}
        assert prove(claim(held, data, key)) == {"accepted": [held], "rejected": []}
    # Proven before the commit: the commit needs nothing more.
    assert users.bob.commit("/mine.bin", size, [ChunkRef(held, size)]).committed


def test_a_read_only_namespace_gets_no_proof_key(users):
    """Only namespaces the caller may write carry a key (proofs make chunks usable there)."""
    users.alice.mkdir("/Seen")
    shared = users.alice.share("/Seen", users.bob.account()["name"], "viewer")
    users.bob.accept_share(shared["ns_id"])
    spaces = {n["ns_id"]: n for n in users.bob.account()["namespaces"]}
    assert spaces[shared["ns_id"]]["role"] == "viewer" and "proof_key" not in spaces[shared["ns_id"]]
    assert "proof_key" in spaces[users.bob.account()["root_ns"]]
    assert users.bob.proof_key(shared["ns_id"]) is None


# ------------------------------------------------------------------------------------------
# dedup scope
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["global", "user"])
def scoped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data = tmp_path_factory.mktemp(f"dedup-{request.param}") / "data"
    with LiveServer(data, extra_args=["--dedup-scope", request.param]) as server:
        server.scope = request.param  # type: ignore[attr-defined]
        yield server


def test_dedup_scope_decides_whether_another_users_chunks_are_reused(scoped: LiveServer, tmp_path: Path):
    suffix = str(abs(hash(tmp_path)) % 10**8)
    alice = ApiClient(scoped.url, scoped.add_user(f"alice{suffix}"))
    bob = ApiClient(scoped.url, scoped.add_user(f"bob{suffix}"))
    try:
        src = tmp_path / "photo.bin"
        src.write_bytes(os.urandom(3 * 1024 * 1024))
        first = upload_file(alice, src, "/photo.bin")
        assert first.chunks_sent > 0
        # The same user never sends the same bytes twice, whatever the scope.
        again = upload_file(alice, src, "/copy of photo.bin")
        assert again.chunks_sent == 0
        # Another user holding the same bytes: deduplicated only with the global scope.
        theirs = upload_file(bob, src, "/photo.bin")
        if scoped.scope == "global":  # type: ignore[attr-defined]
            assert theirs.chunks_sent == 0
        else:
            assert theirs.chunks_sent == first.chunks_sent and theirs.bytes_sent == src.stat().st_size
            # ...and the upload's answer does not say that the server already had those bytes.
            chunks = chunk_bytes(src.read_bytes())
            stored = bob.upload_chunks(bob.account()["root_ns"], [(c.hash, c.data) for c in chunks])
            assert stored == len(chunks)
        assert bob.stat("/photo.bin").content_hash == alice.stat("/photo.bin").content_hash
    finally:
        alice.close()
        bob.close()

"""Moves between namespaces through real HTTP on loopback: between two shared folders, out of
one into the root, into one; metadata only; a viewer cannot take things out."""

from __future__ import annotations

import pytest

from cubby.errors import Forbidden, NotFound
from tests.shares.conftest import blocks_on_disk, file_bytes, put_many


def test_moves_between_namespaces_through_http(server, people):
    alice, bob, carol = people["alice"].api, people["bob"].api, people["carol"].api
    put_many(alice, {f"/A/d/f{i}.txt": file_bytes(i, "moves") for i in range(4)})
    put_many(alice, {"/B/b.txt": b"in B"})
    ns_a = alice.share("/A", people["bob"].name, "editor")["ns_id"]
    alice.share("/A", people["carol"].name, "viewer")
    ns_b = alice.share("/B", people["bob"].name, "editor")["ns_id"]
    for ns in (ns_a, ns_b):
        bob.accept_share(ns)
    carol.accept_share(ns_a)
    disk = blocks_on_disk(server)
    before = sorted((e.path, e.content_hash) for e in bob.list("/A/d", recursive=True))

    moved = bob.move("/A/d", "/B/d")  # between two shared folders
    assert moved.path == "/B/d" and moved.ns_id == ns_b
    assert sorted((e.path.replace("/B/", "/A/"), e.content_hash) for e in bob.list("/B/d", recursive=True)) == before
    with pytest.raises(NotFound):
        alice.stat("/A/d")
    bob.move("/B/d/f0.txt", "/mine.txt")  # out of a shared folder into bob's root
    assert bob.stat("/mine.txt").ns_id == bob.account()["root_ns"]
    bob.move("/mine.txt", "/A/back.txt")  # and into one
    assert alice.stat("/A/back.txt").content_hash == before[0][1]
    assert blocks_on_disk(server) == disk  # metadata only
    with pytest.raises(Forbidden):
        carol.move("/A/back.txt", "/carol.txt")  # a viewer cannot take things out
    assert alice.stat("/A/back.txt")

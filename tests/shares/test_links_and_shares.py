"""Links and shared folders together: a link follows its target into the namespace a share
creates, and a link is worth no more than its creator's access to the folder."""

from __future__ import annotations

import httpx

from tests.shares.conftest import file_bytes, put_many


def test_link_follows_its_target_into_a_new_share(server, people):
    alice, bob = people["alice"], people["bob"]
    put_many(alice.api, {"/Docs/a.txt": file_bytes(1, "docs"), "/Docs/sub/b.txt": file_bytes(2, "docs")})
    file_link = alice.api.create_link("/Docs/sub/b.txt")["url"]
    folder_link = alice.api.create_link("/Docs")["url"]
    assert httpx.get(file_link).content == file_bytes(2, "docs")

    alice.api.share("/Docs", bob.name, "editor")

    assert httpx.get(file_link).content == file_bytes(2, "docs")
    zipped = httpx.get(folder_link)
    assert zipped.status_code == 200 and zipped.content[:2] == b"PK"
    assert httpx.get(f"{folder_link}/a.txt").content == file_bytes(1, "docs")


def test_removed_member_s_links_die_with_their_access(server, people):
    alice, bob = people["alice"], people["bob"]
    put_many(alice.api, {"/Team/plan.txt": file_bytes(3, "team")})
    shared = alice.api.share("/Team", bob.name, "editor")
    bob.api.accept_share(shared["ns_id"])
    (mount,) = [n["path"] for n in bob.api.account()["namespaces"] if n["path"] != "/"]
    link = bob.api.create_link(f"{mount}/plan.txt")["url"]
    assert httpx.get(link).content == file_bytes(3, "team")

    alice.api.remove_member("/Team", bob.name)

    gone = httpx.get(link)
    assert gone.status_code == 404
    assert alice.api.stat("/Team/plan.txt").size == len(file_bytes(3, "team"))

"""A folder's owner sees and revokes the links members made into it (API and `cubby link`)."""

from __future__ import annotations

import json

import httpx
import pytest

from cubby.errors import NotFound
from tests.links.conftest import World
from tests.links.test_link_cli import cubby

pytestmark = pytest.mark.xdist_group("links")


def _shared_with_bob(world: World) -> tuple[str, dict]:
    """Alice shares /Team with Bob (editor); Bob makes a link to a file in it."""
    world.put("/Team/plan.txt", b"the plan")
    bob_name = world.bob.api.account()["name"]
    shared = world.alice.api.share("/Team", bob_name, "editor")
    mount = world.bob.api.accept_share(shared["ns_id"])["path"]
    link = world.bob.api.create_link(f"{mount}/plan.txt")
    return bob_name, link


def test_owner_lists_and_revokes_a_members_link(world: World) -> None:
    bob_name, link = _shared_with_bob(world)
    with httpx.Client(timeout=60) as c:
        assert c.get(link["url"]).content == b"the plan"
    # Alice's own listing is hers only; with all=true it shows Bob's link, by Bob, at her path.
    assert link["id"] not in [x["id"] for x in world.alice.api.list_links()]
    theirs = {x["id"]: x for x in world.alice.api.list_links(include_members=True)}
    assert theirs[link["id"]]["created_by"] == bob_name
    assert theirs[link["id"]]["path"] == "/Team/plan.txt"
    # Bob cannot revoke Alice's links (nor see them); Alice revokes Bob's.
    own = world.alice.api.create_link("/Team/plan.txt")
    with pytest.raises(NotFound):
        world.bob.api.revoke_link(own["id"])
    assert own["id"] not in [x["id"] for x in world.bob.api.list_links(include_members=True)]
    world.alice.api.revoke_link(link["id"])
    with httpx.Client(timeout=60) as c:
        assert c.get(link["url"]).status_code == 404
        assert c.get(own["url"]).content == b"the plan"
    assert link["id"] not in [x["id"] for x in world.bob.api.list_links()]
    assert link["id"] not in [x["id"] for x in world.alice.api.list_links(include_members=True)]


@pytest.mark.parametrize("link_server", ["sqlite"], indirect=True)
def test_owner_revokes_a_members_link_from_the_command_line(world: World) -> None:
    _, link = _shared_with_bob(world)
    p = cubby(world, "--json", "link", "ls", "--all")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    assert link["id"] in [r["id"] for r in rows]
    p = cubby(world, "link", "ls", "--all")
    assert f"(by {world.bob.api.account()['name']})" in p.stdout
    p = cubby(world, "link", "rm", link["id"])
    assert p.returncode == 0, p.stderr
    assert httpx.get(link["url"]).status_code == 404

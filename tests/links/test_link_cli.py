"""`cubby link create|ls|rm` as a real process against the live server."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.links.conftest import World

# The command line is the same whatever the server's database: one engine is enough here.
pytestmark = [pytest.mark.xdist_group("links"), pytest.mark.parametrize("link_server", ["sqlite"], indirect=True)]

CUBBY = [str(Path(sys.executable).with_name("cubby"))] if Path(sys.executable).with_name("cubby").exists() else [
    sys.executable, "-m", "cubby"
]


def cubby(world: World, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "CUBBY_LINK_PASSWORD"}
    full.update({"CUBBY_URL": world.server.url, "CUBBY_TOKEN": world.alice.token, **(env or {})})
    return subprocess.run([*CUBBY, *args], env=full, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)


def test_link_commands(world: World) -> None:
    world.put("/cli/file.txt", b"from the cli")
    p = cubby(world, "link", "create", "/cli/file.txt")
    assert p.returncode == 0, p.stderr
    url = p.stdout.strip()
    assert url.startswith(world.server.url + "/l/")
    assert httpx.get(url).content == b"from the cli"

    tomorrow = (dt.date.today() + dt.timedelta(days=2)).isoformat()
    p = cubby(world, "link", "create", "/cli", "--expires", tomorrow, "--password", "--json",
              env={"CUBBY_LINK_PASSWORD": "s3cret"})
    assert p.returncode == 0, p.stderr
    made = json.loads(p.stdout)
    assert made["kind"] == "folder" and made["has_password"] and made["expires_at"] > dt.datetime.now().timestamp() + 86400
    assert httpx.get(made["url"]).status_code == 401
    assert httpx.get(made["url"], auth=("x", "s3cret")).headers["content-type"] == "application/zip"

    p = cubby(world, "link", "ls", "--json")
    listed = [json.loads(line) for line in p.stdout.splitlines()]
    assert {item["path"] for item in listed} == {"/cli/file.txt", "/cli"}
    assert "password" in cubby(world, "link", "ls").stdout

    p = cubby(world, "link", "rm", made["id"])
    assert p.returncode == 0 and made["id"] in p.stdout
    assert httpx.get(made["url"], auth=("x", "s3cret")).status_code == 404
    assert [json.loads(line)["path"] for line in cubby(world, "link", "ls", "--json").stdout.splitlines()] == ["/cli/file.txt"]


def test_link_command_errors(world: World) -> None:
    world.put("/e.txt", b"e")
    p = cubby(world, "link", "create", "/e.txt", "--expires", "2001-02-03")
    assert p.returncode == 2 and "expires_in_past" in p.stderr
    p = cubby(world, "link", "create", "/e.txt", "--expires", "next tuesday")
    assert p.returncode == 2 and "--expires" in p.stderr
    p = cubby(world, "link", "create", "/missing.txt")
    assert p.returncode == 2 and "not_found" in p.stderr
    p = cubby(world, "link", "rm", "0123456789abcdef")
    assert p.returncode == 2 and "not_found" in p.stderr
    p = cubby(world, "link", "create", "/e.txt", "--password")  # no terminal and no CUBBY_LINK_PASSWORD
    assert p.returncode != 0
    assert cubby(world, "link", "ls", "--json").stdout.strip() == ""
    for cmd in (["link", "--help"], ["link", "create", "--help"], ["link", "ls", "--help"], ["link", "rm", "--help"]):
        assert cubby(world, *cmd).returncode == 0

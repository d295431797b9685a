"""A server whose database holds hostile rows cannot make the sync client write outside its folder.

The rows are written straight into a live server's metadata database (as a compromised server
would serve them): journal entries and nodes with ``..``, absolute, ``.cubby`` in any case, NUL,
backslash and over-long paths, and a move of a real folder to ``/../Y``. A client that was
already syncing (it replays the journal) and a new one (it reads the listing) must leave a
sibling folder and their own state folder untouched, apply everything else, and report each
refused entry through ``cubby status`` (and ``--json``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, select, update

from cubby.client.sync.trust import UnsafePath, local_target, remote_path
from cubby.metadata.schema import journal, namespaces, nodes
from tests.helpers.live_server import ROOT
from tests.sync.conftest import Clients

HOSTILE = [
    "/../X",
    "/../../escape.txt",
    "/.cubby/state.db",
    "/.CUBBY",
    "/.Cubby/tmp/evil",
    "/a\\..\\..\\b",
    "/nul\x00name",
    "//etc/cron.d/x",
    "/ok/../../up",
    "/" + "n" * 300,
    "/ctl\x07bell",
]


def snapshot(d: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dnames, fnames in os.walk(d):
        for n in dnames:
            out[os.path.relpath(os.path.join(dirpath, n), d)] = None
        for n in fnames:
            out[os.path.relpath(os.path.join(dirpath, n), d)] = Path(dirpath, n).read_bytes()
    return out


def plant(metadata_url: str, user_ns: int, keep_node: int) -> None:
    """Journal rows (for a client already syncing) and nodes rows (for a new client's listing),
    then a move of the real folder ``/keep`` to ``/../Y``."""
    eng = create_engine(metadata_url)
    with eng.begin() as c:
        head, next_node = c.execute(select(namespaces.c.head, namespaces.c.next_node).where(namespaces.c.ns_id == user_ns)).one()
        now = time.time()
        for i, path in enumerate(HOSTILE):
            jid, nid = head + 1 + i, next_node + i
            kind = "file" if i % 2 else "folder"
            common = {"ns_id": user_ns, "node_id": nid, "parent_id": 0, "kind": kind, "name": path.rsplit("/", 1)[-1], "path": path, "rev": jid,
                          "size": 3 if kind == "file" else 0, "content_hash": hashlib.sha256(b"bad").hexdigest() if kind == "file" else None}
            c.execute(insert(journal).values(jid=jid, op="add" if kind == "file" else "mkdir", path_key=path.casefold(),
                                             created_at=now, **common))
            c.execute(insert(nodes).values(path_key=f"zz-hostile-{i}", deleted=False, **common))
        jid = head + 1 + len(HOSTILE)
        c.execute(insert(journal).values(
            ns_id=user_ns, jid=jid, op="move", node_id=keep_node, parent_id=0, kind="folder", name="Y", path="/../Y",
            path_key="/../y", rev=jid, old_path="/keep", old_parent_id=0, created_at=now,
        ))
        c.execute(update(namespaces).where(namespaces.c.ns_id == user_ns).values(head=jid, next_node=next_node + len(HOSTILE)))
    eng.dispose()


def status_json(clients: Clients, folder: Path) -> list[dict[str, object]]:
    env = {**os.environ, "CUBBY_URL": clients.server.url, "CUBBY_TOKEN": clients.token, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-m", "cubby", "--json", "status", str(folder)], env=env, capture_output=True,
                         text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_hostile_rows_are_refused_reported_and_never_touch_the_disk_outside(clients: Clients, tmp_path: Path) -> None:
    box = tmp_path / "box"
    sibling = box / "sibling"
    (sibling / "inner").mkdir(parents=True)
    (sibling / "precious.txt").write_bytes(b"do not touch")
    (box / "victim.txt").write_bytes(b"mine")

    old = clients.new("box/old")
    (old.root / "keep").mkdir()
    (old.root / "keep" / "x.txt").write_bytes(b"x")
    assert old.run_once().converged
    keep = next(r for r in old.state.remote_items() if r.path == "/keep")
    state_before = sorted(p.name for p in (old.root / ".cubby").iterdir())
    outside_before = snapshot(box.parent)

    ns_id = keep.ns_id
    plant(clients.server.metadata_url, ns_id, keep.node_id)
    (old.root / "later.txt").write_bytes(b"the rest goes on")
    report = old.run_once()
    new = clients.new("box/new")
    report_new = new.run_once()

    assert report.converged and report_new.converged, (report.to_dict(), report_new.to_dict())
    # Nothing outside either folder changed (the sibling, the victim, the folders' parents)...
    after = snapshot(box.parent)
    for rel, content in outside_before.items():
        if not rel.startswith(("box/old", "box/new")) or rel in ("box/old", "box/new"):
            assert after.get(rel, "gone") == content, rel
    assert not [rel for rel in after if not rel.startswith(("box/old", "box/new")) and rel not in outside_before]
    # ...nor inside the state folders (no server name reaches them, in any case)...
    assert sorted(p.name for p in (old.root / ".cubby").iterdir()) == state_before
    for root in (old.root, new.root):
        assert {p.name for p in root.iterdir()} == {".cubby", "keep", "later.txt"}
        assert (root / "keep" / "x.txt").read_bytes() == b"x"
    assert not (new.root / ".cubby" / "tmp" / "evil").exists()
    # ...and the rest went on: the local file reached the server and the other client.
    assert (new.root / "later.txt").read_bytes() == b"the rest goes on"

    refused = {(r.source, r.path) for r in old.state.refusals()}
    assert ("journal", "/../Y") in refused
    assert len({p for s, p in refused if s == "journal"}) == len(HOSTILE) + 1
    assert {r.source for r in new.state.refusals()} == {"listing"}
    assert len(new.state.refusals()) == len(HOSTILE)
    old.close()

    lines = status_json(clients, old.root)
    shown = [line for line in lines if "refused" in line and "source" in line]
    assert len(shown) == len(HOSTILE) + 1
    assert all(line["reason"] for line in shown)
    assert any(line["refused"] == "/../X" and line["source"] == "journal" for line in shown)
    assert lines[-1]["refused"] == len(HOSTILE) + 1


@pytest.mark.parametrize("path", HOSTILE + ["/", "relative", "/.cubby", "/.CUBBY/x", "/Ｘ/../y"])
def test_remote_path_refuses_what_cubby_get_refuses_and_the_state_folder(path: str) -> None:
    with pytest.raises(UnsafePath):
        remote_path(path)


def test_remote_path_keeps_ordinary_names() -> None:
    assert remote_path("/a/.cubbyx/b") == "/a/.cubbyx/b"
    assert remote_path("/sub/.cubby") == "/sub/.cubby"  # only the top-level state folder is the client's
    assert remote_path("/.cubby/x", in_user_tree=False) == "/.cubby/x"  # inside a shared folder: placed under its mount


def test_local_target_refuses_escapes_links_and_the_state_folder(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    (root / "d").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", root / "link")
    os.symlink(root / ".cubby", root / "state-link")
    assert local_target(root, "d/f") == root / "d" / "f"
    assert local_target(root, "link") == root / "link"  # the name itself is acted on, not followed
    for rel in ("../x", "/etc/passwd", "d/../../x", "", "d//f", ".cubby/state.db", ".CUBBY", ".Cubby/tmp/x",
                "link/f", "state-link/x", "a\x00b"):
        with pytest.raises(UnsafePath):
            local_target(root, rel)


def test_the_state_folder_is_never_synced_in_any_case() -> None:
    from cubby.client.sync.ignore import IgnoreRules

    rules = IgnoreRules()
    for rel in (".cubby", ".CUBBY/state.db", ".Cubby/tmp/x"):
        assert rules.ignored(rel, is_dir=False)
    assert not rules.ignored("sub/.CUBBY", is_dir=True)

"""A synced folder that goes away under a running engine: renamed, deleted, or its drive
unmounted (an empty mount point left at its path). Before, the next pass found nothing there
and deleted every file on the server (and so on every other device); now the engine stops
with ``folder_gone`` and the server keeps everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cubby.client.sync.base import FolderGone
from tests.helpers.live_server import ROOT
from tests.sync.conftest import Clients, server_tree


def _synced(clients: Clients, root: Path) -> dict[str, bytes | None]:
    root.mkdir(exist_ok=True)
    (root / "keep.txt").write_bytes(b"keep")
    (root / "d").mkdir()
    (root / "d" / "inner.txt").write_bytes(b"inner")
    eng = clients.new(root.name)
    assert eng.run_once().converged
    tree = server_tree(clients.api)
    assert tree == {"keep.txt": b"keep", "d": None, "d/inner.txt": b"inner"}
    return tree


def test_a_renamed_folder_stops_the_engine_and_deletes_nothing(clients: Clients) -> None:
    root = clients.tmp / "synced"
    before = _synced(clients, root)
    root.rename(clients.tmp / "elsewhere")
    eng = clients.engines[-1]
    with pytest.raises(FolderGone) as err:
        eng.run_once()
    assert err.value.code == "folder_gone" and str(root) in err.value.message
    assert server_tree(clients.api) == before
    with pytest.raises(FolderGone):
        eng.run_once(local_first=True)  # the periodic safety-net pass too
    assert server_tree(clients.api) == before


def test_a_deleted_folder_made_again_empty_is_not_taken_for_an_emptied_one(clients: Clients) -> None:
    root = clients.tmp / "remade"
    before = _synced(clients, root)
    eng = clients.engines[-1]
    os.rename(root, clients.tmp / "trash")
    root.mkdir()  # the same path, another folder (as a restore from a backup tool would make)
    with pytest.raises(FolderGone):
        eng.run_once()
    assert server_tree(clients.api) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a file system needs root")
def test_an_unmounted_drive_leaves_an_empty_mount_point_that_is_not_synced(clients: Clients) -> None:
    root = clients.tmp / "drive"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "cubby-test", str(root)], check=True)
    try:
        before = _synced(clients, root)
        eng = clients.engines[-1]
    finally:
        subprocess.run(["umount", "-l", str(root)], check=True)
    assert list(root.iterdir()) == []  # the mount point, as a drive that went leaves it
    with pytest.raises(FolderGone):
        eng.run_once()
    assert server_tree(clients.api) == before


def test_the_running_command_ends_with_folder_gone(clients: Clients) -> None:
    """`cubby sync FOLDER` as a person runs it: the folder is renamed while it runs, a change
    on the server wakes it, and it exits 2 naming the folder; the server keeps its files."""
    root = clients.tmp / "daemon"
    root.mkdir()
    (root / "one.txt").write_bytes(b"one")
    env = {**os.environ, "CUBBY_URL": clients.server.url, "CUBBY_TOKEN": clients.token, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "cubby", "sync", str(root)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while "one.txt" not in server_tree(clients.api):
            assert time.monotonic() < deadline and proc.poll() is None, "the first upload never happened"
            time.sleep(0.1)
        root.rename(clients.tmp / "daemon-moved")
        clients.api.mkdir("/wake-up")  # a change on the server: the client runs a pass
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2 and "[folder_gone]" in err, (out, err)
    assert server_tree(clients.api)["one.txt"] == b"one"


def _sync(clients: Clients, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CUBBY_URL": clients.server.url, "CUBBY_TOKEN": clients.token, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-m", "cubby", *args], env=env, capture_output=True, text=True, check=False)


def test_a_folder_synced_before_without_its_state_is_not_synced_again_unasked(clients: Clients) -> None:
    """A folder `cubby sync` linked on this machine, then renamed (its path gone) or left as an
    empty mount point: the next `cubby sync` there refuses (folder_state_missing) and makes
    nothing, where it used to start a first sync and download the whole account again into
    the wrong place. `--relink` starts it again; a folder never synced starts as ever."""
    root = clients.tmp / "laptop"
    root.mkdir()
    (root / "mine.txt").write_bytes(b"mine")
    first = _sync(clients, "sync", "--once", str(root))
    assert first.returncode == 0, first.stderr
    before = server_tree(clients.api)
    assert before == {"mine.txt": b"mine"}

    root.rename(clients.tmp / "laptop-moved")
    gone = _sync(clients, "sync", "--once", str(root))
    assert gone.returncode == 2 and "[folder_state_missing]" in gone.stderr and "--relink" in gone.stderr
    assert not root.exists()  # not made again

    root.mkdir()  # an empty mount point at the same path
    empty = _sync(clients, "--json", "sync", "--once", str(root))
    assert empty.returncode == 2 and "folder_state_missing" in empty.stderr
    assert list(root.iterdir()) == [] and server_tree(clients.api) == before

    again = _sync(clients, "sync", "--once", "--relink", str(root))
    assert again.returncode == 0, again.stderr
    assert (root / "mine.txt").read_bytes() == b"mine" and server_tree(clients.api) == before

    fresh = clients.tmp / "never-synced"
    assert _sync(clients, "sync", "--once", str(fresh)).returncode == 0
    assert (fresh / "mine.txt").read_bytes() == b"mine"


def test_an_unreadable_record_of_folders_leaves_sync_as_it_was(clients: Clients) -> None:
    state_home = Path(os.environ["XDG_STATE_HOME"])
    record = state_home / "cubby" / "synced-folders.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    saved = record.read_bytes() if record.exists() else None
    try:
        record.write_text("{not json")
        root = clients.tmp / "plain"
        r = _sync(clients, "sync", "--once", str(root))
        assert r.returncode == 0, r.stderr
        assert str(root.resolve()) in json.loads(record.read_text())  # written anew, whole
    finally:
        if saved is None:
            record.unlink(missing_ok=True)
        else:
            record.write_bytes(saved)

"""A scan takes the folders the previous scan read whole from the file index as they were
(`FolderScan`) while nothing in them changed: what it finds must always be what a scan from
nothing finds, whatever changed in between."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cubby.client.sync.scanner import ScanResult, scan
from cubby.client.sync.state import StateDb
from tests.sync.conftest import Clients


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, StateDb, ThreadPoolExecutor]]:
    root = tmp_path / "root"
    for d in ("a", "b/c", "e"):
        (root / d).mkdir(parents=True)
    for f in ("a/1", "a/2", "b/3", "b/c/4", "e/5", "6"):
        (root / f).write_bytes(f"content of {f}".encode())
    (root / "a/x").write_bytes(b"12345")
    (root / "a/y").write_bytes(b"abcde")
    os.symlink("a/1", root / "link")
    state = StateDb(tmp_path / "state.db")
    with ThreadPoolExecutor(2) as pool:
        yield root, state, pool
    state.close()


def _seen(res: ScanResult) -> list[tuple[str, str, str, str | None, int, int]]:
    return sorted((i.rel, i.path, i.kind, i.hash, i.inode, i.size) for i in res.items)


def test_an_unchanged_tree_is_taken_whole_the_same_objects(tree: tuple[Path, StateDb, ThreadPoolExecutor]) -> None:
    root, state, pool = tree
    first = scan(root, state, pool)
    assert first.hashed == 9 and not first.folders  # read from the disk, not from the index
    first = scan(root, state, pool, previous=first)
    assert first.hashed == 0 and set(first.folders) == {"", "a", "b", "b/c", "e"}
    state.set_settled("a fingerprint")  # not a change to the index: the next scan still reuses
    again = scan(root, state, pool, previous=first)
    assert again.hashed == 0 and again.items == first.items
    assert all(x is y for x, y in zip(again.items, first.items, strict=True))
    assert all(again.folders[k] is first.folders[k] for k in first.folders)


def _append(root: Path) -> None:
    with open(root / "a/1", "ab") as fh:
        fh.write(b" and more")


def _same_size_new_mtime(root: Path) -> None:
    st = os.stat(root / "a/2")
    (root / "a/2").write_bytes(b"CONTENT OF a/2")
    os.utime(root / "a/2", ns=(st.st_atime_ns, st.st_mtime_ns + 1))


def _chmod(root: Path) -> None:
    os.chmod(root / "b/c/4", 0o755)


def _new_file(root: Path) -> None:
    (root / "b/c/new").write_bytes(b"new")


def _deleted(root: Path) -> None:
    (root / "e/5").unlink()


def _deleted_folder(root: Path) -> None:
    (root / "b/c/4").unlink()
    (root / "b/c").rmdir()


def _link_retargeted(root: Path) -> None:
    (root / "link").unlink()
    os.symlink("b/3", root / "link")


def _file_becomes_folder(root: Path) -> None:
    (root / "6").unlink()
    (root / "6").mkdir()
    (root / "6" / "inner").write_bytes(b"inner")


def _renamed_within(root: Path) -> None:
    os.rename(root / "a/1", root / "a/one")


def _swapped_same_size(root: Path) -> None:
    """Two files of one size trade places: every name and size as before, not the inodes."""
    os.rename(root / "a/x", root / "a/tmp")
    os.rename(root / "a/y", root / "a/x")
    os.rename(root / "a/tmp", root / "a/y")


def _ignored_now(root: Path) -> None:
    (root / ".cubbyignore").write_text("c/\n")


def _unstorable_name(root: Path) -> None:
    (root / "e/bad.").write_bytes(b"a name cubby cannot store")


CHANGES: list[Callable[[Path], None]] = [
    _append, _same_size_new_mtime, _chmod, _new_file, _deleted, _deleted_folder, _link_retargeted,
    _file_becomes_folder, _renamed_within, _swapped_same_size, _ignored_now, _unstorable_name,
]


@pytest.mark.parametrize("change", CHANGES, ids=[c.__name__.strip("_") for c in CHANGES])
def test_a_rescan_sees_every_change_as_a_scan_from_nothing_does(
    tree: tuple[Path, StateDb, ThreadPoolExecutor], change: Callable[[Path], None]
) -> None:
    root, state, pool = tree
    first = scan(root, state, pool)
    first = scan(root, state, pool, previous=first)  # the index settled: every folder taken whole
    assert first.hashed == 0 and len(first.folders) == 5
    change(root)
    again = scan(root, state, pool, previous=first)
    fresh = scan(root, state, pool, persist=False)
    assert _seen(again) == _seen(fresh)
    assert (again.unsyncable, again.outside_links) == (fresh.unsyncable, fresh.outside_links)
    assert _seen(again) != _seen(first) or change is _unstorable_name
    # and the scan after takes it whole again, the same as from nothing
    third = scan(root, state, pool, previous=again)
    assert third.hashed == 0 and _seen(third) == _seen(fresh)
    assert {id(x) for x in third.items} == {id(y) for y in again.items}  # (hashed items came last)


def test_the_index_changing_underneath_stops_the_reuse(tree: tuple[Path, StateDb, ThreadPoolExecutor]) -> None:
    """Another writer of the file index (a download records what it wrote): the previous
    scan's items may no longer be the index's, so nothing is taken whole."""
    root, state, pool = tree
    first = scan(root, state, pool)
    rec = state.file("a/2")
    assert rec is not None
    state.drop_files(["a/2"])  # forgotten: the next scan must hash it again
    again = scan(root, state, pool, previous=first)
    assert again.hashed == 1 and _seen(again) == _seen(first)


@pytest.mark.parametrize("patterns", [[], ["build/", "*.log", "/top-only.txt", "docs/*.bak", ".cubby"]])
def test_a_file_of_a_synced_folder_is_ignored_as_the_whole_rules_say(patterns: list[str]) -> None:
    """`IgnoreRules.ignored_file` (what a scan asks of each file of a folder it lists) agrees
    with `IgnoreRules.ignored` for every file whose folder is synced."""
    from cubby.client.sync.ignore import IgnoreRules

    rules = IgnoreRules.parse(patterns)
    names = ["a.tmp", "~$r.docx", ".DS_Store", ".n.swp", "x~", "4913", "run.log", "top-only.txt", "old.bak",
             "notes.txt", ".cubby", ".CUBBY", "build", "tmp", ".cubbyignore", "é.txt"]
    for rel_dir in ("", "docs", "src/deep", "docs/docs"):
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            assert rules.ignored_file(rel_dir, name) == rules.ignored(rel, False), rel


def test_a_running_client_takes_every_folder_whole_after_an_upload_and_still_sees_an_edit(clients: Clients) -> None:
    a = clients.new("a")
    for d in ("x/y", "z"):
        (a.root / d).mkdir(parents=True)
    for f in ("x/1", "x/y/2", "z/3", "4"):
        (a.root / f).write_bytes(f.encode())
    assert a.run_once().converged  # the upload
    uploaded = a.last_scan  # its last round's, which found every file in the index
    assert set(uploaded.folders) == {"", "x", "x/y", "z"}
    quiet = a.run_once()  # (writing the settled plan's fingerprint was no change to the index)
    assert quiet.converged and not quiet.applied
    before = a.last_scan
    assert all(before.folders[k] is uploaded.folders[k] for k in uploaded.folders)
    again = a.run_once()
    assert again.converged and not again.applied
    assert all(a.last_scan.folders[k] is before.folders[k] for k in before.folders)
    (a.root / "x/y/2").write_bytes(b"edited")
    assert a.run_once().applied == {"Upload": 1}

"""Two and three clients against a real server converge on every kind of change."""

from __future__ import annotations

import os
from pathlib import Path

from tests.sync.conftest import Clients, local_tree, server_tree


def write(p: Path, data: bytes) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def same_everywhere(c: Clients) -> dict[str, bytes | None]:
    trees = [local_tree(e.root) for e in c.engines]
    for t in trees[1:]:
        assert t == trees[0]
    assert server_tree(c.api) == trees[0]
    return trees[0]


def test_create_edit_rename_move_delete_converge(clients: Clients) -> None:
    a, b = clients.new("alpha"), clients.new("beta")
    write(a.root / "docs" / "one.txt", b"one")
    write(a.root / "docs" / "deep" / "two.bin", os.urandom(300_000))
    (a.root / "empty").mkdir()
    clients.settle()
    tree = same_everywhere(clients)
    assert tree["docs/one.txt"] == b"one" and tree["empty"] is None

    # edit on b, rename on a, move between folders on b, new empty folder on a
    write(b.root / "docs" / "one.txt", b"one, edited")
    clients.settle()
    (a.root / "docs" / "one.txt").rename(a.root / "docs" / "uno.txt")
    os.rename(b.root / "docs" / "deep" / "two.bin", b.root / "empty" / "two.bin")
    (a.root / "also-empty").mkdir()
    clients.settle()
    tree = same_everywhere(clients)
    assert tree["docs/uno.txt"] == b"one, edited"
    assert "docs/one.txt" not in tree and "empty/two.bin" in tree and "docs/deep/two.bin" not in tree
    assert tree["also-empty"] is None

    # folder rename is one move; delete of a file and of a whole folder
    (a.root / "docs").rename(a.root / "papers")
    clients.settle()
    tree = same_everywhere(clients)
    assert tree["papers/uno.txt"] == b"one, edited" and "docs" not in tree
    (b.root / "papers" / "uno.txt").unlink()
    import shutil

    shutil.rmtree(b.root / "empty")
    clients.settle()
    tree = same_everywhere(clients)
    assert "papers/uno.txt" not in tree and "empty" not in tree and tree["papers/deep"] is None


def test_folder_move_is_one_server_move(clients: Clients) -> None:
    a, b = clients.new("alpha"), clients.new("beta")
    for i in range(20):
        write(a.root / "big" / f"f{i}.txt", f"file {i}".encode())
    clients.settle()
    head_before = clients.api.account()["namespaces"][0]["head"]
    (a.root / "big").rename(a.root / "moved")
    clients.settle()
    assert clients.api.account()["namespaces"][0]["head"] == head_before + 1
    assert sorted(p for p in local_tree(b.root)) == sorted(["moved"] + [f"moved/f{i}.txt" for i in range(20)])
    same_everywhere(clients)


def test_conflicting_edits_keep_both(clients: Clients) -> None:
    a, b = clients.new("alpha"), clients.new("beta")
    write(a.root / "notes.txt", b"base")
    clients.settle()
    write(a.root / "notes.txt", b"alpha's version")
    write(b.root / "notes.txt", b"beta's version")
    clients.settle()
    tree = same_everywhere(clients)
    versions = {v for k, v in tree.items() if k.startswith("notes")}
    assert versions == {b"alpha's version", b"beta's version"}
    copies = [k for k in tree if "conflicted copy from" in k]
    assert len(copies) == 1 and copies[0].endswith(".txt")


def test_edit_beats_delete(clients: Clients) -> None:
    a, b = clients.new("alpha"), clients.new("beta")
    write(a.root / "keep.txt", b"v1")
    write(a.root / "dir" / "inner.txt", b"v1")
    clients.settle()
    (a.root / "keep.txt").unlink()
    write(b.root / "keep.txt", b"v2 from beta")
    import shutil

    shutil.rmtree(b.root / "dir")
    write(a.root / "dir" / "inner.txt", b"v2 from alpha")
    clients.settle()
    tree = same_everywhere(clients)
    assert tree["keep.txt"] == b"v2 from beta"
    assert tree["dir/inner.txt"] == b"v2 from alpha"


def test_three_clients_and_case_and_normalisation(clients: Clients) -> None:
    a, b, c = clients.new("alpha"), clients.new("beta"), clients.new("gamma")
    write(a.root / "Report.txt", b"from alpha")
    write(b.root / "report.txt", b"from beta")
    write(c.root / "caf\u00e9.txt", b"nfc")
    write(a.root / "cafe\u0301.txt", b"nfd")
    clients.settle()
    tree = same_everywhere(clients)
    reports = sorted(v for k, v in tree.items() if k.lower().startswith("report"))  # type: ignore[type-var]
    assert reports == [b"from alpha", b"from beta"]
    cafes = sorted(v for k, v in tree.items() if k.startswith("caf"))  # type: ignore[type-var]
    assert cafes == [b"nfc", b"nfd"]


def test_same_content_on_both_sides_is_adopted_without_transfer(clients: Clients) -> None:
    a, b = clients.new("alpha"), clients.new("beta")
    data = os.urandom(2_000_000)
    write(a.root / "x" / "same.bin", data)
    write(b.root / "x" / "same.bin", data)
    clients.settle([a])
    rep = b.run_once()
    assert rep.converged and "Download" not in rep.applied and "Upload" not in rep.applied
    assert not any("conflicted" in k for k in local_tree(b.root))


def test_offline_edit_lands_after_reconnect(clients: Clients) -> None:
    a, _ = clients.new("alpha"), clients.new("beta")
    write(a.root / "f.txt", b"online")
    clients.settle()
    clients.server.stop()
    try:
        write(a.root / "f.txt", b"edited offline")
        write(a.root / "new" / "g.txt", b"created offline")
        import pytest

        from cubby.errors import Unavailable

        with pytest.raises(Unavailable):
            a.run_once()
        assert (a.root / "f.txt").read_bytes() == b"edited offline"
    finally:
        clients.server.start()
    clients.settle()
    tree = same_everywhere(clients)
    assert tree["f.txt"] == b"edited offline" and tree["new/g.txt"] == b"created offline"


def test_ignored_files_stay_local(clients: Clients) -> None:
    a, b = clients.new("alpha"), clients.new("beta")
    write(a.root / ".cubbyignore", b"build/\n*.log\n")
    for name in ("x.tmp", "~$doc.docx", ".DS_Store", ".doc.swp", "build/out.o", "run.log", "keep.txt"):
        write(a.root / name, b"x")
    clients.settle()
    names = set(local_tree(b.root))
    assert names == {".cubbyignore", "keep.txt"}


def test_remote_files_with_ignored_names_are_left_alone(clients: Clients, tmp_path: Path) -> None:
    from cubby.client import upload

    src = tmp_path / "src.bin"
    src.write_bytes(b"put by another tool")
    upload.upload_file(clients.api, src, "/scratch.tmp")
    upload.upload_file(clients.api, src, "/.DS_Store")
    a = clients.new("alpha")
    (a.root / "real.txt").write_bytes(b"real")
    clients.settle()
    assert set(local_tree(a.root)) == {"real.txt"}
    assert {"scratch.tmp", ".DS_Store", "real.txt"} <= set(server_tree(clients.api))


def test_a_folder_delete_never_takes_a_file_added_meanwhile(clients: Clients) -> None:
    import shutil

    a, b = clients.new("alpha"), clients.new("beta")
    write(a.root / "d" / "old.txt", b"old")
    clients.settle()
    shutil.rmtree(a.root / "d")
    write(b.root / "d" / "fresh.txt", b"added by beta while alpha deletes d")
    fired = []

    def beta_lands_between_refresh_and_plan(where: str) -> None:
        if where == "refreshed" and not fired:
            fired.append(where)
            assert b.run_once().converged  # beta's upload lands after alpha read the journal

    a.crash_hook = beta_lands_between_refresh_and_plan
    a.run_once()
    a.crash_hook = None
    clients.settle()
    tree = same_everywhere(clients)
    assert tree["d/fresh.txt"] == b"added by beta while alpha deletes d" and "d/old.txt" not in tree


def test_a_file_changing_during_sync_is_never_committed_half_written(clients: Clients) -> None:
    a = clients.new("alpha")
    early = a.root / "early.bin"   # changes after the scan, before the commit
    # An edit changes after the commit asked for chunks, while they are read (a new small file
    # has its chunks read and proven before its first commit, so it is the edit that is read
    # after one).
    late = a.root / "late.bin"
    late.write_bytes(os.urandom(300_000))
    assert a.run_once().converged
    early.write_bytes(os.urandom(500_000))
    late.write_bytes(os.urandom(600_000))
    final = {early: os.urandom(700_000), late: os.urandom(800_000)}

    def meddle(where: str) -> None:
        if where == "planned" and early.stat().st_size != 700_000:
            early.write_bytes(final[early])
        if where == "committed" and late.stat().st_size != 800_000:
            late.write_bytes(final[late])

    a.crash_hook = meddle
    assert a.run_once().converged
    for p, data in final.items():
        assert b"".join(clients.api.download("/" + p.name)) == data
        # no other version was ever committed (late.bin: its first one, then the final one)
        assert len(clients.api.history("/" + p.name)) == (2 if p == late else 1)


def test_a_delete_that_meets_a_renamed_folder_is_sent_again_at_the_new_path(clients: Clients) -> None:
    """A deletes a file while another client renames its folder on the server, between A's plan
    and A's delete request: the delete by the old path finds nothing (404). A must not take
    that for "already gone" (it recorded the file as deleted, so the file stayed on the server
    and out of A's remote tree for good: the drift the netns convergence test caught); the
    next pass sees the rename in the journal and deletes the file at its new path."""
    a = clients.new("a")
    (a.root / "f").mkdir()
    (a.root / "f" / "x.txt").write_bytes(b"x" * 100)
    (a.root / "f" / "keep.txt").write_bytes(b"k" * 100)
    assert a.run_once().converged
    (a.root / "f" / "x.txt").unlink()
    real_batch = a.api.batch
    renamed: list[bool] = []

    def racing_batch(bodies: list[dict[str, object]]) -> list[object]:
        if not renamed:
            renamed.append(True)
            clients.api.move("/f", "/g")  # another client, just before A's request lands
        return real_batch(bodies)  # type: ignore[arg-type]

    a.api.batch = racing_batch  # type: ignore[method-assign]
    a.run_once()
    assert renamed
    a.api.batch = real_batch  # type: ignore[method-assign]
    clients.settle([a])
    on_server = {e.path for e in clients.api.list("/", recursive=True)}
    assert "/g/keep.txt" in on_server and "/g/x.txt" not in on_server, on_server
    assert {p.relative_to(a.root).as_posix() for p in a.root.rglob("*.txt")} == {"g/keep.txt"}

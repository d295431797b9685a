"""The sync client with shared folders, against a real server on loopback: a folder that is
shared keeps its files on the owner's disk with no transfer and no conflict; a member's client
downloads the mounted folder; an editor's edit reaches the owner's client; a viewer's local
edit is never uploaded and never lost; a removed member's client drops the folder."""

from __future__ import annotations

from pathlib import Path

from cubby.client.api import ApiClient
from cubby.client.sync.engine import SyncEngine
from tests.sync.conftest import local_tree


def engine(server, tmp: Path, token: str, label: str) -> SyncEngine:
    root = tmp / label
    root.mkdir()
    return SyncEngine(root, ApiClient(server.url, token), host=label)


def settle(*engines: SyncEngine, rounds: int = 5) -> None:
    for _ in range(rounds):
        changed = False
        for e in engines:
            rep = e.run_once()
            changed = changed or bool(rep.applied)
        if not changed:
            return
    raise AssertionError("clients did not settle")


def conflicted(tree: dict[str, bytes | None]) -> list[str]:
    return [p for p in tree if "conflicted copy" in p]


def test_share_mount_edit_view_and_remove(server, tmp_path, request):
    tag = str(abs(hash(request.node.nodeid)) % 10**6)
    tokens = {who: server.add_user(f"{who}{tag}") for who in ("alice", "bob", "carol")}
    apis = {who: ApiClient(server.url, t) for who, t in tokens.items()}
    a = engine(server, tmp_path, tokens["alice"], "alice")
    files = {f"Projects/f{i}.txt": f"file {i}\n".encode() * 50 for i in range(20)}
    files["Projects/deep/big.bin"] = bytes(range(256)) * 4096
    for rel, data in files.items():
        (a.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (a.root / rel).write_bytes(data)
    settle(a)
    before = local_tree(a.root)

    shared = apis["alice"].share("/Projects", f"bob{tag}", "editor")
    apis["alice"].share("/Projects", f"carol{tag}", "viewer")
    apis["bob"].accept_share(shared["ns_id"])
    apis["carol"].accept_share(shared["ns_id"])

    # The owner's client adopts the folder's move into its own namespace: nothing changes on disk.
    settle(a)
    assert local_tree(a.root) == before and not conflicted(local_tree(a.root))

    b = engine(server, tmp_path, tokens["bob"], "bob")
    c = engine(server, tmp_path, tokens["carol"], "carol")
    settle(b, c)
    for e in (b, c):
        tree = local_tree(e.root)
        assert {k: v for k, v in tree.items() if k.startswith("Projects/") and v is not None} == files

    # An editor's edit reaches the owner's client.
    (b.root / "Projects/f3.txt").write_bytes(b"bob was here\n")
    settle(b, a, c)
    assert (a.root / "Projects/f3.txt").read_bytes() == b"bob was here\n"
    assert (c.root / "Projects/f3.txt").read_bytes() == b"bob was here\n"

    # A viewer's local edit is not uploaded and not lost.
    (c.root / "Projects/f4.txt").write_bytes(b"carol's private edit\n")
    settle(c, a)
    assert b"".join(apis["alice"].download("/Projects/f4.txt")) == files["Projects/f4.txt"]
    kept = [v for v in local_tree(c.root).values() if v == b"carol's private edit\n"]
    assert kept, "the viewer's edit was lost"

    # A removed member's client drops the folder (nothing of it left that came from the server).
    apis["alice"].remove_member("/Projects", f"bob{tag}")
    settle(b)
    assert not (b.root / "Projects").exists() or not any((b.root / "Projects").rglob("*.txt"))
    # A removed viewer's client drops the folder but keeps the edit it could never send,
    # outside the removed folder.
    apis["alice"].remove_member("/Projects", f"carol{tag}")
    settle(c)
    tree = local_tree(c.root)
    assert not any(k.startswith("Projects/") for k in tree)
    survivors = [k for k, v in tree.items() if v == b"carol's private edit\n"]
    assert survivors and all("conflicted copy" in k for k in survivors), tree.keys()
    for e in (a, b, c):
        e.close()
        e.api.close()
    for api in apis.values():
        api.close()


def test_renaming_a_mount_locally_moves_the_mount(server, tmp_path, request):
    """Renaming a shared folder on disk renames where it appears in this member's tree, as in
    Dropbox; the folder's contents stay put for everyone and nothing is uploaded again."""
    tag = str(abs(hash(request.node.nodeid)) % 10**6)
    tokens = {who: server.add_user(f"{who}{tag}") for who in ("alice", "bob")}
    apis = {who: ApiClient(server.url, t) for who, t in tokens.items()}
    a = engine(server, tmp_path, tokens["alice"], "alice")
    files = {f"Projects/f{i}.txt": b"x%d" % i for i in range(5)}
    for rel, data in files.items():
        (a.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (a.root / rel).write_bytes(data)
    settle(a)
    shared = apis["alice"].share("/Projects", f"bob{tag}", "editor")
    apis["bob"].accept_share(shared["ns_id"])
    b = engine(server, tmp_path, tokens["bob"], "bob")
    settle(a, b)

    (b.root / "Projects").rename(b.root / "Renamed")
    settle(b, a)
    # The owner may rename theirs too: their copy of the folder moved to the shared namespace
    # when they shared it, and must not come back as a stale folder of their root.
    (a.root / "Projects").rename(a.root / "Team")
    settle(a, b)
    assert local_tree(a.root) == {"Team": None, **{k.replace("Projects", "Team"): v for k, v in files.items()}}
    assert [e.path for e in apis["alice"].list("/", recursive=True)] == ["/Team"]

    mounts = {n["path"]: n["ns_id"] for n in apis["bob"].account()["namespaces"]}
    assert mounts.get("/Renamed") == shared["ns_id"] and "/Projects" not in mounts
    assert [e.path for e in apis["bob"].list("/", recursive=True)] == ["/Renamed"]  # no copy in bob's root
    assert sorted(e.path for e in apis["bob"].list("/Renamed", recursive=True)) == [f"/Renamed/f{i}.txt" for i in range(5)]
    assert local_tree(b.root) == {"Renamed": None, **{k.replace("Projects", "Renamed"): v for k, v in files.items()}}
    for e in (a, b):
        e.close()
        e.api.close()
    for api in apis.values():
        api.close()

"""The planner, tested without a disk or a server.

A small simulated world (a case-sensitive local disk with inodes, a server that compares names
by `paths.key` and checks expected revisions like the real one) applies plans until the planner
returns nothing. Hypothesis starts from a synced tree, changes each side at random (create,
edit, delete, move, mkdir, case-only renames), and checks that:
- the two sides end identical (by key, kind and content);
- every version written on either side survives, as the file or as a conflicted copy;
- when only one side changed, no conflicted copy appears;
- the plan converges in a bounded number of rounds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from cubby.client.sync import planner as P
from cubby.client.sync.conflicts import conflict_name, split_ext
from cubby.core import paths


@dataclass
class LNode:
    kind: str
    content: str | None
    inode: int


@dataclass
class World:
    local: dict[str, LNode] = field(default_factory=dict)  # rel -> node (case-sensitive)
    remote: dict[int, P.RemoteItem] = field(default_factory=dict)  # node id -> item
    base: dict[P.NodeKey, P.BaseItem] = field(default_factory=dict)
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))  # type: ignore[type-arg]

    def nid(self) -> int:
        return next(self.counter)

    # -- the server ------------------------------------------------------------------------------
    def r_at(self, path: str) -> P.RemoteItem | None:
        k = paths.key(path)
        return next((r for r in self.remote.values() if paths.key(r.path) == k), None)

    def r_ensure(self, path: str) -> str:
        if path == "/":
            return "/"
        r = self.r_at(path)
        if r is not None:
            assert r.kind == "folder", f"{r.path} is a file"
            return r.path
        parent, name = paths.split(path)
        pp = self.r_ensure(parent)
        n = self.nid()
        p = paths.join(pp, name)
        self.remote[n] = P.RemoteItem(1, n, p, "folder", n)
        return p

    def r_commit(self, path: str, content: str, expected: int | None) -> P.RemoteItem | None:
        cur = self.r_at(path)
        if cur is not None and cur.kind == "folder":
            return None
        if (cur.rev if cur else None) != expected:
            return None
        parent, name = paths.split(path)
        try:
            pp = self.r_ensure(parent)
        except AssertionError:
            return None  # the server: "not_a_folder"
        n = cur.node_id if cur else self.nid()
        rev = self.nid()
        item = P.RemoteItem(1, n, cur.path if cur else paths.join(pp, name), "file", rev, content)
        self.remote[n] = item
        return item

    def r_delete(self, node: int) -> None:
        r = self.remote.pop(node)
        for k, v in list(self.remote.items()):
            if paths.is_within(v.path, r.path):
                del self.remote[k]

    def r_move(self, node: int, dst: str) -> P.RemoteItem | None:
        r = self.remote[node]
        if paths.key(dst) != paths.key(r.path) and (self.r_at(dst) is not None or paths.is_within(dst, r.path)):
            return None
        parent, name = paths.split(dst)
        try:
            pp = self.r_ensure(parent)
        except AssertionError:
            return None
        newp = paths.join(pp, name)
        for k, v in list(self.remote.items()):
            if k != node and paths.is_within(v.path, r.path):
                self.remote[k] = replace(v, path=paths.rebase(v.path, r.path, newp))
        self.remote[node] = replace(r, path=newp, rev=self.nid())
        return self.remote[node]

    # -- the disk --------------------------------------------------------------------------------
    def l_items(self) -> list[P.LocalItem]:
        return [P.LocalItem(paths.normalize("/" + rel), rel, n.kind, n.content, n.inode) for rel, n in self.local.items()]

    def l_makedirs(self, rel: str) -> None:
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.local:
                self.local[p] = LNode("folder", None, self.nid())
            assert self.local[p].kind == "folder"

    def rel_for(self, path: str) -> str:
        by_key = {paths.key("/" + r): r for r, n in self.local.items() if n.kind == "folder"}
        parts: list[str] = []
        for a in paths.ancestors(path):
            rel = by_key.get(paths.key(a))
            parts = rel.split("/") if rel else parts + [paths.split(a)[1]]
        return "/".join(parts + [paths.split(path)[1]])

    def l_rename(self, rel: str, new_rel: str) -> None:
        assert new_rel not in self.local
        assert not new_rel.startswith(rel + "/"), "a folder cannot move into itself (EINVAL)"
        parent = new_rel.rpartition("/")[0]
        if parent:
            self.l_makedirs(parent)
        for r in sorted(self.local):
            if r == rel or r.startswith(rel + "/"):
                self.local[new_rel + r[len(rel):]] = self.local.pop(r)

    # -- applying a plan -------------------------------------------------------------------------
    def base_move(self, node: P.NodeKey, new_path: str, inode: int | None = None) -> None:
        b = self.base[node]
        for k, v in list(self.base.items()):
            if k != node and b.kind == "folder" and paths.is_within(v.path, b.path):
                self.base[k] = replace(v, path=paths.rebase(v.path, b.path, new_path))
        self.base[node] = replace(b, path=new_path, inode=b.inode if inode is None else inode)

    def set_base(self, b: P.BaseItem) -> None:
        for k, v in list(self.base.items()):
            if paths.key(v.path) == paths.key(b.path) and k != b.node:
                del self.base[k]
        self.base[b.node] = b

    def apply(self, op: P.Op) -> None:
        if isinstance(op, P.ConflictCopy):
            self.l_rename(op.rel, self.rel_for(op.new_path))
        elif isinstance(op, P.MoveLocal):
            target = self.rel_for(op.new_path)
            if target in self.local and paths.key(target) != paths.key(op.rel):
                return
            self.l_rename(op.rel, target)
            self.base_move(op.node, op.new_path)
        elif isinstance(op, P.MoveRemote):
            r = self.remote.get(op.node[1])
            if r is None or r.rev != op.expected_rev:
                return
            moved = self.r_move(op.node[1], op.new_path)
            if moved is not None:
                self.base_move(op.node, moved.path)
        elif isinstance(op, P.RecordMove):
            self.base_move(op.node, op.new_path, op.inode)
        elif isinstance(op, P.Download):
            rel = op.replace.rel if op.replace else self.rel_for(op.remote.path)
            cur = self.local.get(rel)
            if (cur is None) != (op.replace is None):
                return
            if cur is not None and (cur.kind != "file" or cur.content != op.replace.hash):  # type: ignore[union-attr]
                return
            parent = rel.rpartition("/")[0]
            if parent:
                self.l_makedirs(parent)
            ino = self.nid()
            self.local[rel] = LNode("file", op.remote.hash, ino)
            self.set_base(P.BaseItem(1, op.remote.node_id, op.remote.path, "file", op.remote.rev, op.remote.hash, ino))
        elif isinstance(op, P.Upload):
            cur = self.local.get(op.local.rel)
            if cur is None or cur.content != op.local.hash:
                return
            item = self.r_commit(op.local.path, op.local.hash or "", op.expected_rev)
            if item is not None:
                self.set_base(P.BaseItem(1, item.node_id, item.path, "file", item.rev, item.hash, op.local.inode))
        elif isinstance(op, P.MkdirLocal):
            rel = self.rel_for(op.remote.path)
            self.l_makedirs(rel)
            self.set_base(P.BaseItem(1, op.remote.node_id, op.remote.path, "folder", op.remote.rev, None, self.local[rel].inode))
        elif isinstance(op, P.MkdirRemote):
            p = self.r_ensure(op.local.path)
            r = self.r_at(p)
            assert r is not None
            self.set_base(P.BaseItem(1, r.node_id, r.path, "folder", r.rev, None, op.local.inode))
        elif isinstance(op, P.DeleteLocal):
            for r in list(self.local):
                if r == op.local.rel or r.startswith(op.local.rel + "/"):
                    del self.local[r]
            self.base.pop(op.node, None)
        elif isinstance(op, P.DeleteRemote):
            r = self.remote.get(op.remote.node_id)
            if r is not None and r.rev == op.remote.rev:
                self.r_delete(r.node_id)
                self.base.pop(op.remote.node, None)
        elif isinstance(op, P.Adopt):
            self.set_base(P.BaseItem(1, op.remote.node_id, op.remote.path, op.remote.kind, op.remote.rev, op.remote.hash, op.local.inode))
        elif isinstance(op, P.Forget):
            self.base.pop(op.node, None)

    def plan(self, ctx: P.Context) -> list[P.Op]:
        return P.plan(self.base.values(), self.remote.values(), self.l_items(), ctx)

    def settle(self, ctx: P.Context, limit: int = 60) -> int:
        for i in range(limit):
            ops = self.plan(ctx)
            if not ops or P.blocked_only(ops):
                return i
            for op in ops:
                try:
                    self.apply(op)
                except AssertionError:
                    pass  # what the server or the disk refuses (a file where a folder should be)
        raise AssertionError(f"no convergence; last plan {self.plan(ctx)}")

    # -- comparisons -----------------------------------------------------------------------------
    def local_view(self) -> dict[str, tuple[str, str | None]]:
        return {paths.key("/" + r): (n.kind, n.content) for r, n in self.local.items()}

    def remote_view(self) -> dict[str, tuple[str, str | None]]:
        return {paths.key(r.path): (r.kind, r.hash) for r in self.remote.values()}


NAMES = ["a", "A", "b", "c.txt", "C.TXT", "caf\u00e9", "cafe\u0301"]
FOLDERS = ["x", "X", "y", "z"]


def make_synced(spec: list[tuple[int, int, bool]]) -> World:
    """A tree both sides hold, with a base that says so."""
    w = World()
    for folder_i, name_i, deep in spec:
        path = "/" + FOLDERS[folder_i % len(FOLDERS)] + ("/" + FOLDERS[(folder_i + 1) % len(FOLDERS)] if deep else "") + "/" + NAMES[name_i % len(NAMES)]
        path = paths.normalize(path)
        if w.r_at(path) is not None:
            continue
        try:
            w.r_commit(path, f"init{w.nid()}", None)
        except AssertionError:
            continue
    for r in sorted(w.remote.values(), key=lambda r: r.path.count("/")):
        rel = w.rel_for(r.path)
        if r.kind == "folder":
            w.l_makedirs(rel)
        else:
            w.local[rel] = LNode("file", r.hash, w.nid())
        w.base[r.node] = P.BaseItem(1, r.node_id, r.path, r.kind, r.rev, r.hash, w.local[rel].inode)
    return w


OPS = ["edit", "create", "delete", "move", "mkdir", "case"]
op_lists = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 1000), st.integers(0, 1000)), max_size=6)


def local_op(w: World, kind: str, i: int, j: int, written: set[str], protect: str = "") -> None:
    rels = sorted(r for r in w.local if r != protect)
    files = [r for r in rels if w.local[r].kind == "file"]
    folders = [r for r in rels if w.local[r].kind == "folder"]
    content = f"L{w.nid()}"
    if kind == "edit" and files:
        r = files[i % len(files)]
        w.local[r] = replace(w.local[r], content=content)
        written.add(content)
    elif kind == "create":
        parent = ([""] + folders)[i % (len(folders) + 1)]
        rel = (parent + "/" if parent else "") + NAMES[j % len(NAMES)]
        if rel not in w.local:
            w.local[rel] = LNode("file", content, w.nid())
            written.add(content)
    elif kind == "delete" and rels:
        r = rels[i % len(rels)]
        for x in list(w.local):
            if x == r or x.startswith(r + "/"):
                del w.local[x]
    elif kind in ("move", "case") and rels:
        r = rels[i % len(rels)]
        name = r.rpartition("/")[2]
        if kind == "case":
            new = r.rpartition("/")[0] + ("/" if "/" in r else "") + (name.swapcase() if name.swapcase() != name else name + "2")
        else:
            choices = [""] + [f for f in folders if not (f == r or f.startswith(r + "/"))]
            parent = choices[j % len(choices)]
            new = (parent + "/" if parent else "") + NAMES[j % len(NAMES)]
        if new not in w.local and not new.startswith(r + "/"):
            w.l_rename(r, new)
    elif kind == "mkdir":
        parent = ([""] + folders)[i % (len(folders) + 1)]
        rel = (parent + "/" if parent else "") + FOLDERS[j % len(FOLDERS)]
        if rel not in w.local:
            w.local[rel] = LNode("folder", None, w.nid())


def remote_op(w: World, kind: str, i: int, j: int, written: set[str], protect: str = "") -> None:
    items = sorted((r for r in w.remote.values() if r.path != protect), key=lambda r: r.path)
    files = [r for r in items if r.kind == "file"]
    folders = [r for r in items if r.kind == "folder"]
    content = f"R{w.nid()}"
    if kind == "edit" and files:
        r = files[i % len(files)]
        if w.r_commit(r.path, content, r.rev):
            written.add(content)
    elif kind == "create":
        parent = (["/"] + [f.path for f in folders])[i % (len(folders) + 1)]
        if w.r_commit(paths.join(parent, NAMES[j % len(NAMES)]), content, None):
            written.add(content)
    elif kind == "delete" and items:
        w.r_delete(items[i % len(items)].node_id)
    elif kind in ("move", "case") and items:
        r = items[i % len(items)]
        parent, name = paths.split(r.path)
        if kind == "case":
            dst = paths.join(parent, name.swapcase() if name.swapcase() != name else name + "2")
        else:
            parents = ["/"] + [f.path for f in folders if not paths.is_within(f.path, r.path)]
            dst = paths.join(parents[j % len(parents)], NAMES[j % len(NAMES)])
        w.r_move(r.node_id, paths.normalize(dst))
    elif kind == "mkdir":
        parent = (["/"] + [f.path for f in folders])[i % (len(folders) + 1)]
        try:
            w.r_ensure(paths.join(parent, FOLDERS[j % len(FOLDERS)]))
        except AssertionError:
            pass


def all_contents(w: World) -> set[str]:
    return {n.content for n in w.local.values() if n.content}


spec_st = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6), st.booleans()), max_size=6)


@given(spec_st, op_lists, op_lists)
@example(  # a parent moved locally into its child's new place while the server renamed the child
    spec=[(0, 0, True), (2, 0, False)], lops=[("move", 1, 2), ("move", 0, 2)], rops=[("create", 0, 0), ("case", 2, 0)]
)
@settings(max_examples=settings.default.max_examples * 10)
def test_plans_converge_and_lose_nothing(spec: list[tuple[int, int, bool]], lops: list[tuple[str, int, int]], rops: list[tuple[str, int, int]]) -> None:
    w = make_synced(spec)
    written_l: set[str] = set()
    written_r: set[str] = set()
    for k, i, j in lops:
        local_op(w, k, i, j, written_l)
    for k, i, j in rops:
        remote_op(w, k, i, j, written_r)
    # what must survive: versions written on a side and still there when sync starts
    survive = (written_l & all_contents(w)) | (written_r & {r.hash for r in w.remote.values() if r.hash})
    local_changed = bool(lops) and w.local_view() != make_synced(spec).local_view()
    remote_changed = bool(rops)
    collided = len({paths.key("/" + r) for r in w.local}) != len(w.local)
    w.settle(P.Context())
    assert w.local_view() == w.remote_view(), (spec, lops, rops, sorted(w.local), sorted(r.path for r in w.remote.values()))
    final = all_contents(w)
    assert survive <= final, f"lost {survive - final}"
    if not (local_changed and remote_changed) and not collided:
        assert not any("conflicted copy" in r for r in w.local), sorted(w.local)
    assert not w.plan(P.Context())


@given(spec_st, op_lists)
@settings(max_examples=settings.default.max_examples * 4)
def test_one_sided_changes_never_conflict_and_converge_quickly(spec: list[tuple[int, int, bool]], ops: list[tuple[str, int, int]]) -> None:
    for side in ("local", "remote"):
        w = make_synced(spec)
        written: set[str] = set()
        for k, i, j in ops:
            (local_op if side == "local" else remote_op)(w, k, i, j, written)
        collided = len({paths.key("/" + r) for r in w.local}) != len(w.local)
        rounds = w.settle(P.Context())
        assert rounds <= 12
        assert w.local_view() == w.remote_view()
        assert collided or not any("conflicted copy" in r for r in w.local)


def test_a_synced_tree_plans_nothing() -> None:
    w = make_synced([(0, 0, False), (1, 3, True), (2, 5, False)])
    assert w.plan(P.Context()) == []


def test_remote_folder_move_is_one_local_move() -> None:
    w = make_synced([(0, 0, True), (0, 2, True), (0, 3, False)])
    x = w.r_at("/x")
    assert x is not None
    w.r_move(x.node_id, "/moved")
    ops = w.plan(P.Context())
    assert ops == [P.MoveLocal("x", "/moved", x.node)]


def test_local_move_is_a_remote_move_even_when_edited_remotely() -> None:
    w = make_synced([(0, 0, False)])
    f = w.r_at("/x/a")
    assert f is not None
    w.l_rename("x/a", "x/b")
    ops = w.plan(P.Context())
    assert ops == [P.MoveRemote("/x/a", "/x/b", f.rev, f.node)]


def test_case_collision_locally_renames_one() -> None:
    w = World()
    w.local["a.txt"] = LNode("file", "1", 1)
    w.local["A.txt"] = LNode("file", "2", 2)
    ops = w.plan(P.Context())
    assert len(ops) == 1 and isinstance(ops[0], P.ConflictCopy) and "conflicted copy" in ops[0].new_path
    w.settle(P.Context())
    assert sorted(c for _, c in w.remote_view().values()) == ["1", "2"]


def test_read_only_namespace_keeps_local_changes_unsent() -> None:
    w = make_synced([(0, 0, False)])
    w.local["x/a"] = replace(w.local["x/a"], content="mine")
    w.local["x/new"] = LNode("file", "new", 99)
    ctx = P.Context(mounts={"/": (1, True), "/x": (2, False)})
    ops = w.plan(ctx)
    assert all(isinstance(o, P.Blocked) for o in ops) and {o.path for o in ops} == {"/x/a", "/x/new"}  # type: ignore[union-attr]
    # a remote edit meanwhile: the local one becomes a conflicted copy, still not sent
    f = w.r_at("/x/a")
    assert f is not None
    w.r_commit("/x/a", "theirs", f.rev)
    w.settle(ctx)
    assert w.r_at("/x/a").hash == "theirs"  # type: ignore[union-attr]
    assert {n.content for n in w.local.values()} >= {"mine", "new", "theirs"}


def test_evicted_mount_keeps_local_edits_outside() -> None:
    w = make_synced([(0, 0, False), (0, 2, False)])
    w.local["x/a"] = replace(w.local["x/a"], content="edited")
    w.local["x/new-empty"] = LNode("folder", None, 77)
    for k in list(w.remote):
        if paths.is_within(w.remote[k].path, "/x"):
            del w.remote[k]
    ctx = P.Context(evicted=("/x",), host="h", day="2026-01-01")
    w.settle(ctx)
    assert not any(r == "x" or r.startswith("x/") for r in w.local)
    assert w.local["x (conflicted copy from h 2026-01-01)/a"].content == "edited"
    assert w.local["x (conflicted copy from h 2026-01-01)/new-empty"].kind == "folder"


def test_conflict_names() -> None:
    taken: set[str] = set()
    n1 = conflict_name("/d/report.final.pdf", "box", "2026-11-25", taken.__contains__)
    assert n1 == "/d/report.final (conflicted copy from box 2026-11-25).pdf"
    taken.add(paths.key(n1))
    assert conflict_name("/d/Report.final.PDF", "box", "2026-11-25", taken.__contains__).endswith("2026-11-25 2).PDF")
    assert split_ext(".bashrc") == (".bashrc", "")
    long = "/" + "x" * 250 + ".txt"
    assert len(paths.split(conflict_name(long, "h", "d", lambda k: False))[1].encode()) <= paths.MAX_NAME_BYTES


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    import random

    from cubby.client.sync.daemon import Backoff

    b = Backoff(first=0.5, cap=8.0, rng=random.Random(1))
    delays = [b.next() for _ in range(10)]
    for n, d in enumerate(delays):
        assert min(8.0, 0.5 * 2**n) * 0.5 <= d <= min(8.0, 0.5 * 2**n)
    assert max(delays) <= 8.0 and len(set(delays)) == len(delays)
    b.reset()
    assert b.next() <= 0.5


def test_unstable_files_are_left_alone_and_keep_their_folder() -> None:
    w = make_synced([(0, 0, False)])
    x = w.r_at("/x")
    assert x is not None
    items = [P.LocalItem("/x", "x", "folder", None, w.local["x"].inode), P.LocalItem("/x/new", "x/new", "file", None, 5)]
    # the remote deleted x; locally a file is still being written inside it
    w.r_delete(x.node_id)
    ops = P.plan(w.base.values(), w.remote.values(), items, P.Context())
    assert not any(isinstance(o, P.DeleteLocal) and o.local.rel == "x" for o in ops)
    assert not any(getattr(o, "local", None) is not None and o.local.rel == "x/new" for o in ops)  # type: ignore[attr-defined]


def test_ignore_rules() -> None:
    from cubby.client.sync.ignore import IgnoreRules

    rules = IgnoreRules.parse(["# comment", "build/", "*.log", "/top-only.txt", "docs/*.bak"])
    assert rules.ignored(".cubby/state.db", False)
    for name in ("a.tmp", "~$report.docx", ".DS_Store", "d/.notes.txt.swp", "x~", "4913"):
        assert rules.ignored(name, False), name
    assert rules.ignored("src/build", True) and not rules.ignored("src/build", False)
    assert rules.ignored("deep/run.log", False)
    assert rules.ignored("top-only.txt", False)
    assert rules.ignored("docs/old.bak", False) and not rules.ignored("other/old.bak", False)
    assert not rules.ignored("notes.txt", False) and not rules.ignored("tmp", True)


def _writes_remotely_under(op: P.Op, mount: str) -> bool:
    if isinstance(op, P.Upload | P.MkdirRemote):
        return paths.is_within(op.local.path, mount)
    if isinstance(op, P.DeleteRemote):
        return paths.is_within(op.remote.path, mount)
    if isinstance(op, P.MoveRemote):
        return paths.is_within(op.path, mount) or paths.is_within(op.new_path, mount)
    return False


@given(op_lists, op_lists)
@settings(max_examples=settings.default.max_examples * 4)
def test_a_read_only_folder_is_never_written_and_local_changes_there_are_kept(
    lops: list[tuple[str, int, int]], rops: list[tuple[str, int, int]]
) -> None:
    w = make_synced([(0, 0, False), (0, 3, False), (1, 2, True), (2, 4, False)])
    x = w.r_at("/x")
    assert x is not None
    ctx = P.Context(mounts={"/": (1, True), "/x": (1, False)})
    written_l: set[str] = set()
    written_r: set[str] = set()
    for k, i, j in lops:
        local_op(w, k, i, j, written_l, protect="x")
    for k, i, j in rops:
        remote_op(w, k, i, j, written_r, protect="/x")
    survive = (written_l & all_contents(w)) | (written_r & {r.hash for r in w.remote.values() if r.hash})
    for _ in range(60):
        ops = w.plan(ctx)
        assert not any(_writes_remotely_under(o, "/x") for o in ops), ops
        if not ops or P.blocked_only(ops):
            break
        for op in ops:
            try:
                w.apply(op)
            except AssertionError:
                pass
    else:
        raise AssertionError("no convergence")
    everything = all_contents(w) | {r.hash for r in w.remote.values() if r.hash}
    assert survive <= everything
    outside_l = {k: v for k, v in w.local_view().items() if not paths.is_within(k, "/x")}
    outside_r = {k: v for k, v in w.remote_view().items() if not paths.is_within(k, "/x")}
    assert outside_l == outside_r


def test_folders_colliding_by_case_are_renamed_once_with_their_contents() -> None:
    w = World()
    w.local["Docs"] = LNode("folder", None, 1)
    w.local["Docs/a.txt"] = LNode("file", "upper", 2)
    w.local["docs"] = LNode("folder", None, 3)
    w.local["docs/a.txt"] = LNode("file", "lower", 4)
    ops = w.plan(P.Context())
    assert len(ops) == 1 and isinstance(ops[0], P.ConflictCopy) and ops[0].rel == "docs"
    w.settle(P.Context())
    assert sorted(c for _, c in w.remote_view().values() if c) == ["lower", "upper"]


perturb_st = st.lists(st.tuples(st.sampled_from(["rev", "inode", "hash", "path", "kind", "unstable", "drop"]), st.integers(0, 20)), max_size=2)


@given(spec_st, op_lists, op_lists, perturb_st)
@settings(max_examples=settings.default.max_examples * 4)
def test_trees_that_agree_plan_nothing_and_a_settled_world_agrees(
    spec: list[tuple[int, int, bool]], lops: list[tuple[str, int, int]], rops: list[tuple[str, int, int]],
    perturb: list[tuple[str, int]],
) -> None:
    """`plan` answers `agreed` trees with no plan, without its phases: every phase must then
    plan nothing too, whatever the trees (changed on either side, or one item of one tree
    off by one field); and the trees of a world that settled do agree (the shortcut is
    taken after a pass that did all it planned)."""
    w = make_synced(spec)
    for k, i, j in lops:
        local_op(w, k, i, j, set())
    for k, i, j in rops:
        remote_op(w, k, i, j, set())
    w.settle(P.Context())
    base, remote, local = list(w.base.values()), list(w.remote.values()), w.l_items()
    assert P.agreed(base, remote, local) and P.plan_phases(base, remote, local, P.Context()) == []
    for field_name, at in perturb:
        trees: list[list[Any]] = [base, remote, local]
        tree = trees[at % 3]
        if not tree:
            continue
        item = tree[at % len(tree)]
        if field_name == "drop":
            changed = None
        elif field_name == "rev":
            changed = replace(item, rev=item.rev + 1) if hasattr(item, "rev") else replace(item, size=item.size + 1)
        elif field_name == "inode":
            changed = replace(item, inode=item.inode + 1) if hasattr(item, "inode") else replace(item, node_id=item.node_id + 100)
        elif field_name == "hash":
            changed = replace(item, hash=(item.hash or "") + "x")
        elif field_name == "path":
            changed = replace(item, path=item.path.upper() if at % 2 else item.path + "x")
        elif field_name == "kind":
            changed = replace(item, kind="folder" if item.kind == "file" else "file")
        else:
            changed = replace(item, hash=None)
        tree[at % len(tree)] = changed  # type: ignore[call-overload]
        if changed is None:
            tree.remove(None)
    if P.agreed(base, remote, local):
        assert P.plan_phases(base, remote, local, P.Context()) == []

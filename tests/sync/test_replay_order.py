"""The remote tree never drifts from the server, whatever the order of answers and replay.

A client records the server's answer to its own operation at once, usually before it has
replayed the journal entries that precede that operation. The property: after any interleaving
of other clients' changes, this client's own changes (answers recorded at once) and journal
replay in pages of any size, replaying the journal to its head leaves the remote tree exactly
the server's tree (every node at its path, with its kind and revision).

The server here is a model (nodes with parents and names, one journal entry per change, a
folder move or delete is one entry, as in `cubby.metadata.store`), so the property runs on the
state layer alone, without a network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cubby.client.sync.planner import MOUNT_NODE
from cubby.client.sync.state import StateDb, user_path
from cubby.core import paths
from cubby.model import Entry, JournalEntry

NS = 1


@dataclass
class Node:
    parent: int
    name: str
    kind: str
    rev: int


@dataclass
class Server:
    nodes: dict[int, Node] = field(default_factory=dict)
    journal: list[JournalEntry] = field(default_factory=list)
    jid: int = 0
    next_id: int = 1

    def path(self, nid: int) -> str:
        parts: list[str] = []
        while nid:
            parts.append(self.nodes[nid].name)
            nid = self.nodes[nid].parent
        return "/" + "/".join(reversed(parts))

    def below(self, nid: int) -> list[int]:
        return [n for n in self.nodes if n != nid and self._inside(n, nid)]

    def _inside(self, n: int, folder: int) -> bool:
        while n:
            if n == folder:
                return True
            n = self.nodes[n].parent
        return False

    def folders(self) -> list[int]:
        return [0] + [n for n, v in self.nodes.items() if v.kind == "folder"]

    def free(self, parent: int, name: str) -> bool:
        return not any(v.parent == parent and v.name == name for v in self.nodes.values())

    def _record(self, op: str, nid: int, old_path: str | None = None) -> JournalEntry:
        n = self.nodes[nid]
        e = JournalEntry(NS, self.jid, op, nid, n.parent, n.kind, self.path(nid), n.name, self.jid, old_path=old_path)  # type: ignore[arg-type]
        self.journal.append(e)
        return e

    def create(self, parent: int, name: str, kind: str) -> int | None:
        if not self.free(parent, name):
            return None
        self.jid += 1
        nid, self.next_id = self.next_id, self.next_id + 1
        self.nodes[nid] = Node(parent, name, kind, self.jid)
        self._record("mkdir" if kind == "folder" else "add", nid)
        return nid

    def edit(self, nid: int) -> bool:
        if self.nodes[nid].kind != "file":
            return False
        self.jid += 1
        self.nodes[nid].rev = self.jid
        self._record("edit", nid)
        return True

    def move(self, nid: int, parent: int, name: str) -> bool:
        if parent == nid or self._inside(parent, nid) or not self.free(parent, name):
            return False
        old = self.path(nid)
        self.jid += 1
        self.nodes[nid] = Node(parent, name, self.nodes[nid].kind, self.jid)
        self._record("move", nid, old)
        return True

    def delete(self, nid: int, unchanged_since: int | None = None) -> bool:
        doomed = self.below(nid)
        if unchanged_since is not None and any(self.nodes[n].rev > unchanged_since for n in doomed):
            return False  # what `delete(..., unchanged_since=)` refuses
        self.jid += 1
        e = self._record("delete", nid)
        self.journal[-1] = JournalEntry(**{**e.to_dict(), "op": "delete"})
        for n in doomed + [nid]:
            del self.nodes[n]
        return True

    def answer(self, nid: int, mount: str) -> Entry:
        n = self.nodes[nid]
        return Entry(NS, nid, n.parent, user_path(mount, self.path(nid)), n.name, n.kind, n.rev)  # type: ignore[arg-type]


Action = tuple[str, int, int, int]
NAMES = ["a", "b", "c", "D"]

actions = st.lists(
    st.tuples(
        st.sampled_from(["other", "other", "ours", "ours", "replay"]),
        st.integers(0, 7), st.integers(0, 7), st.integers(0, 9),
    ),
    min_size=8, max_size=30,
)


def run(db: StateDb, mount: str, script: list[Action]) -> Server:
    srv = Server()
    cursor = 0
    for who, x, y, z in script:
        if who == "replay":
            page = srv.journal[cursor : cursor + 1 + z]
            if page:
                cursor = page[-1].jid
                db.apply_journal(NS, page, cursor)
            continue
        ids = sorted(srv.nodes)
        folders = srv.folders()
        what, name = z % 5, NAMES[y % len(NAMES)]
        nid = ids[x % len(ids)] if ids else None
        changed: int | None = None
        deleted: int | None = None
        if what in (0, 1) or nid is None:
            changed = srv.create(folders[x % len(folders)], name, "folder" if what == 0 else "file")
        elif what == 2:
            changed = nid if srv.edit(nid) else None
        elif what == 3:
            changed = nid if srv.move(nid, folders[y % len(folders)], name) else None
        else:
            since = cursor if who == "ours" else None  # a client deletes a folder only if unchanged since its cursor
            deleted = nid if srv.delete(nid, since) else None
        if who == "ours":
            # what the engine does with the server's answer, at once
            if changed is not None:
                assert db.put_remote_entry(srv.answer(changed, mount))
            elif deleted is not None:
                db.delete_remote((NS, deleted))
    if srv.journal[cursor:]:
        db.apply_journal(NS, srv.journal[cursor:], srv.journal[-1].jid)
    return srv


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=actions, mount=st.sampled_from(["/", "/Team"]))
@example(script=[("other", 0, 0, 0), ("replay", 0, 0, 9), ("other", 1, 1, 1), ("ours", 0, 2, 3)], mount="/")
@example(  # a ghost of this client's delete, moved out by another client, is moved back by this one
    script=[("other", 3, 0, 0), ("other", 3, 0, 5), ("ours", 2, 4, 0), ("replay", 7, 6, 3), ("other", 0, 1, 1),
            ("other", 3, 7, 9), ("ours", 4, 7, 5), ("other", 1, 5, 8), ("ours", 3, 2, 9), ("ours", 3, 7, 9),
            ("ours", 5, 0, 0), ("ours", 2, 1, 6), ("ours", 4, 4, 8)],
    mount="/",
)
@example(  # this client deletes a folder into which another client had made folders, then moved them out
    script=[("ours", 6, 2, 8), ("other", 1, 4, 0), ("other", 2, 5, 5), ("other", 7, 3, 3), ("other", 3, 0, 6),
            ("ours", 7, 4, 9), ("other", 2, 3, 5), ("other", 7, 2, 0), ("other", 3, 6, 3), ("replay", 5, 4, 4),
            ("ours", 2, 5, 9)],
    mount="/",
)
@example(  # this client deletes a folder another client had moved a folder out of, holding a file
    script=[("ours", 5, 7, 3), ("ours", 1, 2, 5), ("ours", 1, 5, 5), ("other", 0, 5, 8), ("replay", 6, 6, 0),
            ("other", 5, 0, 3), ("replay", 7, 5, 0), ("ours", 4, 3, 9)],
    mount="/",
)
@example(  # this client's folder moved onto the path of a folder deleted earlier in the journal
    script=[("other", 0, 7, 2), ("other", 0, 4, 0), ("other", 3, 4, 0), ("other", 2, 6, 0), ("other", 3, 1, 5),
            ("other", 6, 1, 0), ("other", 5, 0, 9), ("ours", 3, 1, 8)],
    mount="/Team",
)
def test_answers_and_replay_in_any_order_end_at_the_servers_tree(tmp_path_factory: object, script: list[Action], mount: str) -> None:
    d = Path(tmp_path_factory.mktemp("replay"))  # type: ignore[attr-defined]
    db = StateDb(d / "state.db")
    try:
        db.add_namespace(NS, mount, "owner", 0, [])
        srv = run(db, mount, script)
        have = {(r.node_id, r.path, r.kind, r.rev) for r in db.remote_items() if r.node_id != MOUNT_NODE}
        want = {(nid, user_path(mount, srv.path(nid)), n.kind, n.rev) for nid, n in srv.nodes.items()}
        assert have == want
        assert not db.refusals()
    finally:
        db.close()


def test_a_file_added_before_this_clients_folder_move_follows_the_folder(tmp_path: Path) -> None:
    """The case that drifted: another client adds a file to a folder (jid 2), this client moves
    the folder (jid 3) and records the answer before replaying jid 2."""
    db = StateDb(tmp_path / "state.db")
    try:
        db.add_namespace(NS, "/", "owner", 0, [])
        srv = Server()
        a = srv.create(0, "A", "folder")
        db.apply_journal(NS, srv.journal, srv.jid)
        assert a is not None
        f = srv.create(a, "f.txt", "file")
        assert srv.move(a, 0, "B")
        assert db.put_remote_entry(srv.answer(a, "/"))
        db.apply_journal(NS, srv.journal[1:], srv.jid)
        assert {r.path for r in db.remote_items() if r.node_id == f} == {"/B/f.txt"}
        assert paths.key("/B/f.txt") in {paths.key(r.path) for r in db.remote_items()}
    finally:
        db.close()


def test_a_folder_deleted_where_this_clients_folder_now_is_takes_only_its_own_children(tmp_path: Path) -> None:
    """Two folders at one path for a moment: another client makes /A/B (jid 3) and deletes it
    (jid 4), after which this client moves /C (with a file another client put in it) to /A/B
    and records the answer before replaying. The replayed delete of the first /A/B must not
    take the file now below this client's /A/B: subtrees are found by parent, not by path."""
    db = StateDb(tmp_path / "state.db")
    try:
        db.add_namespace(NS, "/", "owner", 0, [])
        srv = Server()
        a, c = srv.create(0, "A", "folder"), srv.create(0, "C", "folder")
        assert a is not None and c is not None
        f = srv.create(c, "f.txt", "file")
        b = srv.create(a, "B", "folder")
        assert b is not None and srv.delete(b)
        assert srv.move(c, a, "B")
        assert db.put_remote_entry(srv.answer(c, "/"))
        db.apply_journal(NS, srv.journal, srv.jid)
        assert {r.node_id: r.path for r in db.remote_items() if r.node_id != MOUNT_NODE} == {a: "/A", c: "/A/B", f: "/A/B/f.txt"}
    finally:
        db.close()


def test_a_state_database_from_before_parents_were_kept_learns_them_from_its_paths(tmp_path: Path) -> None:
    """An older client's state has no ``parent`` column: opening it fills the column from the
    paths, so a replayed folder move still takes its children along."""
    import sqlite3

    db = StateDb(tmp_path / "state.db")
    srv = Server()
    a = srv.create(0, "A", "folder")
    assert a is not None
    f = srv.create(a, "f.txt", "file")
    db.add_namespace(NS, "/", "owner", 0, [])
    db.apply_journal(NS, srv.journal, srv.jid)
    db.close()
    raw = sqlite3.connect(tmp_path / "state.db")
    raw.execute("DROP INDEX remote_parent")
    raw.execute("ALTER TABLE remote DROP COLUMN parent")
    raw.commit()
    raw.close()
    db = StateDb(tmp_path / "state.db")
    try:
        assert srv.move(a, 0, "Z")
        db.apply_journal(NS, srv.journal[-1:], srv.jid)
        assert {r.node_id: r.path for r in db.remote_items()} == {a: "/Z", f: "/Z/f.txt"}
    finally:
        db.close()


def test_a_folder_moved_out_of_one_this_client_deletes_keeps_its_children(tmp_path: Path) -> None:
    """Another client moves /c/b (holding a file) to /a; this client, whose tree still shows
    /c/b under /c, deletes /c and records the answer ahead of the journal. On the server /a
    and its file survive. The delete's answer keeps what was below /c as ghosts, and the
    replayed move brings /c/b back as /a with its file (it used to come back empty)."""
    db = StateDb(tmp_path / "state.db")
    try:
        db.add_namespace(NS, "/", "owner", 0, [])
        srv = Server()
        c = srv.create(0, "c", "folder")
        assert c is not None
        b = srv.create(c, "b", "folder")
        assert b is not None
        f = srv.create(b, "f.txt", "file")
        db.apply_journal(NS, srv.journal, srv.jid)
        seen = srv.jid
        assert srv.move(b, 0, "a")
        assert srv.delete(c, unchanged_since=seen)
        db.delete_remote((NS, c))
        db.apply_journal(NS, srv.journal[seen:], srv.jid)
        assert {r.node_id: r.path for r in db.remote_items()} == {b: "/a", f: "/a/f.txt"}
    finally:
        db.close()

"""The store against a model: random file operations, and after each one the store's tree,
journal and revisions agree with a plain dictionary that does the same thing."""

from __future__ import annotations

import hashlib

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cubby.blockstore.memory import MemoryBlockStore
from cubby.core import paths
from cubby.errors import BadRequest, Conflict, NotFound
from cubby.metadata.store import open_store
from cubby.model import ChunkRef, CommitRequest

NAMES = st.sampled_from(["a", "B", "c", "A", "dé", "de\u0301"])
PATHS = st.lists(NAMES, min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
CONTENT = st.sampled_from([b"one", b"two", b"three" * 50, b""])


class StoreModel(RuleBasedStateMachine):
    """Model: key -> (display path, kind, content). Folders implied by files are explicit."""

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.tmp = tempfile.mkdtemp()
        self.store = open_store(f"sqlite:///{self.tmp}/m.db")
        self.blocks = MemoryBlockStore()
        self.user, _ = self.store.create_user("u")
        self.ns = self.user.root_ns
        self.model: dict[str, tuple[str, str, bytes | None]] = {}
        self.revs: dict[str, int] = {}
        self.written: set[bytes] = set()

    def teardown(self) -> None:
        self.store.close()

    def _chunks(self, data: bytes) -> tuple[ChunkRef, ...]:
        if not data:
            return ()
        h = hashlib.sha256(data).hexdigest()
        self.store.ingest_chunks(self.ns, [(h, data)], self.blocks)
        return (ChunkRef(h, len(data)),)

    def _materialise(self, path: str) -> str:
        """Add the missing folders above ``path`` to the model and return the display path that
        ``path`` gets: each existing ancestor keeps its own spelling."""
        shown = ""
        parts = path.strip("/").split("/")
        for i, part in enumerate(parts):
            shown = shown + "/" + part
            k = paths.key(shown)
            if k in self.model:
                shown = self.model[k][0]
            elif i < len(parts) - 1:
                self.model[k] = (shown, "folder", None)
        return shown

    def _parent_ok(self, path: str) -> bool:
        return all(self.model.get(paths.key(a), ("", "folder", None))[1] == "folder" for a in paths.ancestors(path))

    @rule(path=PATHS, data=CONTENT)
    def commit(self, path: str, data: bytes) -> None:
        norm = paths.normalize(path)
        k = paths.key(norm)
        existing = self.model.get(k)
        expected = self.revs.get(k) if existing and existing[1] == "file" else None
        req = CommitRequest(norm, len(data), self._chunks(data), expected_rev=expected)
        try:
            res = self.store.commit(self.user.id, self.ns, req)
        except Conflict:
            assert (existing is not None and existing[1] == "folder") or not self._parent_ok(norm)
            return
        assert res.committed and self._parent_ok(norm) and (existing is None or existing[1] == "file")
        shown = self._materialise(norm)
        self.model[k] = (shown, "file", data)
        self.revs[k] = res.entry.rev
        self.written.add(data)

    @rule(path=PATHS)
    def mkdir(self, path: str) -> None:
        norm = paths.normalize(path)
        try:
            self.store.mkdir(self.user.id, self.ns, norm)
        except Conflict:
            assert not self._parent_ok(norm) or self.model.get(paths.key(norm), ("", "folder", None))[1] == "file"
            return
        shown = self._materialise(norm)
        self.model.setdefault(paths.key(norm), (shown, "folder", None))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        k = data.draw(st.sampled_from(sorted(self.model)))
        shown = self.model[k][0]
        self.store.delete(self.user.id, self.ns, shown)
        for other in list(self.model):
            if other == k or other.startswith(k + "/"):
                del self.model[other]
                self.revs.pop(other, None)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), dst=PATHS)
    def move(self, data: st.DataObject, dst: str) -> None:
        k = data.draw(st.sampled_from(sorted(self.model)))
        src = self.model[k][0]
        dst = paths.normalize(dst)
        dk = paths.key(dst)
        try:
            self.store.move(self.user.id, self.ns, src, dst)
        except BadRequest:
            assert dk.startswith(k + "/")
            return
        except Conflict:
            assert (dk in self.model and dk != k) or not self._parent_ok(dst)
            return
        assert not dk.startswith(k + "/")
        parent, name = paths.split(dst)
        dst = paths.join(self._materialise(parent + "/x")[: -len("/x")] or "/", name)
        moved = {o: v for o, v in self.model.items() if o == k or o.startswith(k + "/")}
        for o in moved:
            del self.model[o]
        for o, (shown, kind, content) in moved.items():
            new = paths.rebase(shown, src, dst)
            self.model[paths.key(new)] = (new, kind, content)
            if o in self.revs:
                self.revs.pop(o)
        for o, (shown, kind, _c) in self.model.items():
            if kind == "file" and o not in self.revs:
                self.revs[o] = self.store.stat(self.ns, shown).rev

    @invariant()
    def tree_matches(self) -> None:
        listed = self.store.list(self.ns, "/", recursive=True, limit=10_000).entries
        got = {paths.key(e.path): (e.path, e.kind) for e in listed}
        want = {k: (v[0], v[1]) for k, v in self.model.items()}
        assert got == want
        for shown, kind, content in self.model.values():
            if kind == "file":
                _, chunks = self.store.blocklist(self.ns, shown)
                assert b"".join(self.blocks.get(c.hash) for c in chunks) == content

    @invariant()
    def journal_is_gap_free(self) -> None:
        j = self.store.journal(self.ns, 0, limit=10_000)
        assert [e.jid for e in j] == list(range(1, self.store.head(self.ns) + 1))

    @invariant()
    def nothing_missing_is_found(self) -> None:
        try:
            self.store.stat(self.ns, "/zz-never")
            raise AssertionError("found a path that was never written")
        except NotFound:
            pass


StoreModel.TestCase.settings = settings(stateful_step_count=25, deadline=None)
TestStoreModel = StoreModel.TestCase

"""The planner: a pure function from three trees to the operations that make them agree.

The three trees (as in Dropbox's Nucleus) are the *base* (what both sides held when they last
agreed), the *remote* tree (the server, as the journals say) and the *local* tree (the disk).
Comparing each side with the base says who changed what, which is the only way to tell "the
server deleted it" from "I created it", and "both edited" (a conflict) from "one edited" (not).

No disk, no network, no clock: the planner gets everything as arguments and returns a list of
operations, so the hard part is tested exhaustively (tests/sync/test_planner.py) without either.
The engine applies the operations, records each success in the base, rescans and plans again
until the plan is empty; so a plan may be one *phase* of the work (collision renames, then
moves, then content), and each phase only has to make progress, not finish.

Rules that shape the plan:
- Only-one-side-changed is never a conflict: the change is copied to the other side.
- Both changed to the same content (or both created the same folder): adopt, no transfer.
- Both changed differently: the local version is renamed to a conflicted copy (which is then
  uploaded as a new file) and the remote version is downloaded. Nothing is overwritten.
- Edit against delete: the edit wins, on either side.
- Names are compared by `paths.key` (NFC, case-folded), as the server does; two local names
  with one key are a collision, and all but one are renamed to conflicted copies.
- Moves are recognised by node id (remote) and by inode or content (local), and applied as
  moves, so no chunk travels again.
- Folders are deleted only when everything in them is deleted in the same plan, deepest first,
  so a delete never takes with it something the other side added or edited.
- In a read-only namespace (role viewer) local changes are never uploaded; they stay on disk
  and are reported as `Blocked`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from cubby.client.sync.conflicts import conflict_name
from cubby.core import paths

Kind = Literal["file", "folder"]
NodeKey = tuple[int, int]
"""(namespace id, node id): how the server names a file or folder for good."""

MOUNT_NODE = 0
"""Node id of the synthetic folder that stands for a namespace's mount point."""


@dataclass(frozen=True)
class RemoteItem:
    """A file or folder as the server holds it, at ``path`` in the user's tree."""

    ns_id: int
    node_id: int
    path: str
    kind: Kind
    rev: int
    hash: str | None = None
    size: int = 0
    mtime: float | None = None

    @property
    def node(self) -> NodeKey:
        return (self.ns_id, self.node_id)


@dataclass(frozen=True)
class BaseItem:
    """A file or folder as both sides held it when they last agreed; ``inode`` is the local
    one at that moment (how a local move is recognised)."""

    ns_id: int
    node_id: int
    path: str
    kind: Kind
    rev: int
    hash: str | None = None
    inode: int = 0

    @property
    def node(self) -> NodeKey:
        return (self.ns_id, self.node_id)


@dataclass(frozen=True)
class LocalItem:
    """A file or folder on disk. ``path`` is its NFC display path in the user's tree, ``rel``
    its real relative path on disk (which may be NFD). ``hash`` is None while the file is
    still being written (unstable): the planner leaves it alone until it settles."""

    path: str
    rel: str
    kind: Kind
    hash: str | None = None
    inode: int = 0
    size: int = 0


# -- operations ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConflictCopy:
    """Rename the local item at ``rel`` to ``new_path`` (a free conflicted-copy name)."""

    rel: str
    new_path: str
    reason: str


@dataclass(frozen=True)
class MoveLocal:
    """Apply a remote move: rename local ``rel`` to ``new_path``; the base node follows."""

    rel: str
    new_path: str
    node: NodeKey


@dataclass(frozen=True)
class MoveRemote:
    """Apply a local move on the server; the base node follows."""

    path: str
    new_path: str
    expected_rev: int
    node: NodeKey


@dataclass(frozen=True)
class RecordMove:
    """Both sides already moved the item to the same place: only the base follows."""

    node: NodeKey
    new_path: str
    inode: int


@dataclass(frozen=True)
class Download:
    """Write the remote file to ``remote.path``; ``replace`` is the local item it overwrites
    (unchanged since the base, or the engine refuses), None when nothing is there."""

    remote: RemoteItem
    replace: LocalItem | None


@dataclass(frozen=True)
class Upload:
    """Commit the local file; ``expected_rev`` None means "must not exist on the server"."""

    local: LocalItem
    expected_rev: int | None


@dataclass(frozen=True)
class MkdirLocal:
    remote: RemoteItem


@dataclass(frozen=True)
class MkdirRemote:
    local: LocalItem


@dataclass(frozen=True)
class DeleteLocal:
    """Delete a local item unchanged since the base (the engine checks again before it does)."""

    local: LocalItem
    node: NodeKey


@dataclass(frozen=True)
class DeleteRemote:
    remote: RemoteItem


@dataclass(frozen=True)
class Adopt:
    """Both sides hold the same thing: record it as the base, nothing moves."""

    remote: RemoteItem
    local: LocalItem


@dataclass(frozen=True)
class Forget:
    """Both sides lost the item: drop it from the base."""

    node: NodeKey


@dataclass(frozen=True)
class Blocked:
    """A local change that cannot be sent (read-only namespace); kept on disk, shown in status."""

    path: str
    reason: str


Op = (
    ConflictCopy | MoveLocal | MoveRemote | RecordMove | Download | Upload | MkdirLocal | MkdirRemote
    | DeleteLocal | DeleteRemote | Adopt | Forget | Blocked
)


@dataclass(frozen=True)
class Context:
    """What the planner needs besides the trees: mounts (path -> namespace, writable?), mounts
    the account lost (their local copies are being removed) and how to name conflicted copies."""

    mounts: Mapping[str, tuple[int, bool]] = field(default_factory=lambda: {paths.ROOT: (0, True)})
    evicted: Sequence[str] = ()
    host: str = "host"
    day: str = "1970-01-01"


def _depth(p: str) -> int:
    return 0 if p == paths.ROOT else p.count("/")


class _KeyIndex:
    """Sorted keys, for "everything below this folder" in O(log n + k)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = sorted(keys)

    def below(self, k: str) -> list[str]:
        prefix = k + "/"
        i = bisect.bisect_left(self.keys, prefix)
        out = []
        while i < len(self.keys) and self.keys[i].startswith(prefix):
            out.append(self.keys[i])
            i += 1
        return out


def mount_of(path: str, mounts: Mapping[str, tuple[int, bool]]) -> str:
    """The deepest mount containing ``path``. (The root holds everything and is the answer
    unless a deeper mount holds ``path``: it is never tested, and a folder with no shared
    folder in it, tens of thousands of paths per plan, tests nothing.)"""
    best = paths.ROOT
    for m in mounts:
        if m != paths.ROOT and len(m) > len(best) and paths.is_within(path, m):
            best = m
    return best


def plan(
    base: Iterable[BaseItem],
    remote: Iterable[RemoteItem],
    local: Iterable[LocalItem],
    ctx: Context = Context(),
) -> list[Op]:
    """The next operations to apply. Empty means both sides agree (apart from `Blocked`
    changes, which are returned alone when nothing else is left to do).

    Three trees that agree item for item (`agreed`) plan nothing, and are found so without
    the phases: the plan after a pass that did everything it planned (a first sync's second
    round, tens of thousands of items) is that, and the phases cost ten times the test."""
    base_l, remote_l, local_l = list(base), list(remote), list(local)
    if not ctx.evicted and agreed(base_l, remote_l, local_l):
        return []
    return plan_phases(base_l, remote_l, local_l, ctx)


def agreed(base: Sequence[BaseItem], remote: Sequence[RemoteItem], local: Sequence[LocalItem]) -> bool:
    """Do the three trees hold the same items, each at one path in all three, with names
    that no two share a key (`paths.key`), every file stable and of one content, every
    node the base's on the server, at the base's rev, and at the base's inode on disk?
    Then `plan_phases` plans nothing (with no mount evicted): no collision, no move, and
    every path is "both sides agree" (tests/sync/test_planner.py checks this against it)."""
    n = len(local)
    if len(base) != n or len(remote) != n:
        return False
    by_path_b = {b.path: b for b in base}
    by_path_r = {r.path: r for r in remote}
    if len(by_path_b) != n or len(by_path_r) != n or len({paths.key(i.path) for i in local}) != n:
        return False
    for i in local:
        b = by_path_b.get(i.path)
        r = by_path_r.get(i.path)
        if b is None or r is None or not (
            i.kind == b.kind == r.kind and b.node_id == r.node_id and b.ns_id == r.ns_id
            and b.rev == r.rev and b.inode == i.inode and b.hash == r.hash
        ):
            return False
        if i.kind == "file" and (i.hash is None or i.hash != b.hash):
            return False
    return True


def plan_phases(base_l: list[BaseItem], remote_l: list[RemoteItem], local_l: list[LocalItem], ctx: Context) -> list[Op]:
    """`plan` without its first test (`agreed`): every phase, on any trees."""
    taken: set[str] = set()
    for items in (base_l, remote_l, local_l):
        taken.update(paths.key(it.path) for it in items)

    def is_taken(k: str) -> bool:
        return k in taken

    def conflicted(path: str, folder: bool) -> str:
        name = conflict_name(path, ctx.host, ctx.day, is_taken, folder=folder)
        taken.add(paths.key(name))
        return name

    # -- phase 0: collisions (two local names, one key), duplicate base keys ---------------------
    ops: list[Op] = []
    L: dict[str, LocalItem] = {}
    renamed: list[str] = []
    for it in sorted(local_l, key=lambda i: (_depth(i.path), i.rel)):
        k = paths.key(it.path)
        if k in L:
            if not any(it.rel.startswith(r + "/") for r in renamed):  # else it moves with its folder
                ops.append(ConflictCopy(it.rel, conflicted(it.path, it.kind == "folder"), "name differs only in case or accents"))
                renamed.append(it.rel)
        else:
            L[k] = it
    R: dict[str, RemoteItem] = {}
    R_node: dict[NodeKey, RemoteItem] = {}
    for r in remote_l:
        k = paths.key(r.path)
        # two namespaces claiming one path (a folder just shared): the mounted one wins
        if k not in R or r.ns_id == ctx.mounts.get(mount_of(r.path, ctx.mounts), (0, True))[0]:
            R[k] = r
        R_node[r.node] = r
    B: dict[str, BaseItem] = {}
    for b in sorted(base_l, key=lambda b: (b.node not in R_node, b.node)):
        k = paths.key(b.path)
        if k in B:
            ops.append(Forget(b.node))
        else:
            B[k] = b
    if ops:
        return ops

    def writable(path: str) -> bool:
        return ctx.mounts.get(mount_of(path, ctx.mounts), (0, True))[1]

    def same_ns(a: str, b: str) -> bool:
        return mount_of(a, ctx.mounts) == mount_of(b, ctx.mounts)

    unstable = {k for k, it in L.items() if it.kind == "file" and it.hash is None}

    # -- phase 0b: evicted mounts: keep local edits outside, the rest goes ---------------------
    for m in ctx.evicted:
        mk = paths.key(m)
        outside = ""  # one folder beside the mount for everything kept from it
        for k, l in sorted(L.items()):
            if k in unstable or not paths.is_within(l.path, m) or k == mk:
                continue
            bb = B.get(k)
            changed = bb is None or bb.kind != l.kind or (l.kind == "file" and l.hash != bb.hash)
            empty_new_folder = l.kind == "folder" and bb is None and not any(
                paths.is_within(o.path, l.path) and o is not l for o in L.values()
            )
            if changed and (l.kind == "file" or empty_new_folder):
                outside = outside or conflicted(m, True)
                ops.append(ConflictCopy(l.rel, paths.rebase(l.path, m, outside), "its shared folder was removed"))
                taken.add(paths.key(paths.rebase(l.path, m, outside)))
    if ops:
        return ops

    # -- phase 1: moves -------------------------------------------------------------------------
    new_local: dict[tuple[str, int], list[LocalItem]] = {}
    new_by_hash: dict[str, list[LocalItem]] = {}
    for k, l in L.items():
        if k in B or k in unstable:
            continue
        if l.inode:
            new_local.setdefault((l.kind, l.inode), []).append(l)
        if l.kind == "file" and l.hash is not None:
            new_by_hash.setdefault(l.hash, []).append(l)
    base_hash_count: dict[str, int] = {}
    for b in B.values():
        if b.kind == "file" and b.hash:
            base_hash_count[b.hash] = base_hash_count.get(b.hash, 0) + 1

    moves: list[tuple[str, str, Op]] = []  # (source key, destination key, op)
    for k, b in sorted(B.items(), key=lambda kv: _depth(kv[1].path)):
        if b.node_id == MOUNT_NODE or k in unstable:
            continue
        r = R_node.get(b.node)  # type: ignore[assignment]
        ll = L.get(k)
        if ll is not None and ll.kind == b.kind:
            l = ll
            # a rename that changes only case or accents keeps the key: compare the names
            if r is None or r.path == b.path:
                if r is not None and l.path != b.path and _name(l.path) != _name(b.path) and writable(b.path):
                    dst = paths.join(paths.split(r.path)[0], _name(l.path))
                    moves.append((k, k, MoveRemote(b.path, dst, r.rev, b.node)))
                continue
            dk = paths.key(r.path)
            if dk == k:
                if _name(r.path) == _name(b.path):
                    moves.append((k, k, RecordMove(b.node, r.path, l.inode)))  # only a parent's spelling changed
                elif _name(l.path) == _name(b.path):
                    moves.append((k, k, MoveLocal(l.rel, r.path, b.node)))
                continue
            if dk not in L and not _blocked_parent(r.path, L) and not paths.is_within(r.path, l.path):
                moves.append((k, paths.key(r.path), MoveLocal(l.rel, r.path, b.node)))
            continue
        if ll is not None:
            continue  # replaced by another kind: the content phase decides
        cands = new_local.get((b.kind, b.inode), []) if b.inode else []
        if b.kind == "file":
            cands = [c for c in cands if c.hash == b.hash]
            if not cands and b.hash and base_hash_count.get(b.hash) == 1 and len(new_by_hash.get(b.hash, [])) == 1:
                cands = new_by_hash[b.hash]
        if len(cands) != 1:
            continue
        c = cands[0]
        if r is None:
            continue
        ck = paths.key(c.path)
        if paths.key(r.path) == ck:
            moves.append((k, ck, RecordMove(b.node, r.path, c.inode)))
        elif r.path == b.path:
            if (ck not in R and writable(b.path) and writable(c.path) and same_ns(b.path, c.path)
                    and not paths.is_within(c.path, b.path) and not _blocked_parent(c.path, R)):
                moves.append((k, ck, MoveRemote(b.path, c.path, r.rev, b.node)))
        else:
            dk = paths.key(r.path)
            if dk not in L and not _blocked_parent(r.path, L) and not paths.is_within(r.path, c.path):
                moves.append((ck, dk, MoveLocal(c.rel, r.path, b.node)))
    if moves:
        # Moves of one phase must not touch each other's trees: a move inside a folder that
        # another move takes along, or into a place another move just filled, waits for the
        # next plan, which sees where things ended.
        touched: list[str] = []
        out: list[Op] = []

        def related(a: str, b: str) -> bool:
            return a == b or a.startswith(b + "/") or b.startswith(a + "/")

        for src, dst, op in moves:
            if isinstance(op, RecordMove):
                out.append(op)
                continue
            if any(related(src, t) or related(dst, t) for t in touched):
                continue
            touched += [src, dst]
            out.append(op)
        return out

    # -- phase 2: content ----------------------------------------------------------------------
    lost_mounts = [m for m in ctx.mounts if m != paths.ROOT and paths.key(m) not in L]
    first: list[Op] = []  # mkdirs, conflict renames, adopts, forgets
    transfers: list[Op] = []
    del_local: dict[str, DeleteLocal] = {}
    del_remote: dict[str, DeleteRemote] = {}
    blocked: list[Op] = []
    for k in sorted(set(B) | set(R) | set(L)):
        if k in unstable:
            continue
        was, rem, loc = B.get(k), R.get(k), L.get(k)
        same_node = was is not None and rem is not None and was.node == rem.node
        if rem is not None and loc is not None and rem.kind == loc.kind and (rem.kind == "folder" or rem.hash == loc.hash):
            if not (same_node and was is not None and was.rev == rem.rev and was.path == rem.path and was.inode == loc.inode and was.hash == rem.hash):
                first.append(Adopt(rem, loc))
            continue
        if was is None and rem is None and loc is None:
            continue
        remote_changed = not (
            (was is None and rem is None)
            or (same_node and was is not None and rem is not None and was.kind == rem.kind and (was.kind == "folder" or was.hash == rem.hash))
        )
        local_changed = not (
            (was is None and loc is None)
            or (was is not None and loc is not None and was.kind == loc.kind and (was.kind == "folder" or was.hash == loc.hash))
        )
        if not remote_changed and not local_changed:
            continue
        path = (loc or rem or was).path  # type: ignore[union-attr]
        ro = not writable(path)
        if rem is None and loc is None:
            assert was is not None
            first.append(Forget(was.node))
        elif local_changed and not remote_changed:
            if loc is None:
                assert rem is not None
                if rem.node_id == MOUNT_NODE or any(paths.is_within(rem.path, m) for m in lost_mounts):
                    # a shared folder deleted locally is not deleted for its other members
                    (first if rem.kind == "folder" else transfers).append(MkdirLocal(rem) if rem.kind == "folder" else Download(rem, None))
                elif ro:
                    blocked.append(Blocked(rem.path, "deleted locally in a read-only folder"))
                else:
                    del_remote[k] = DeleteRemote(rem)
            elif ro:
                blocked.append(Blocked(loc.path, "changed locally in a read-only folder"))
            elif rem is not None and rem.kind != loc.kind:
                del_remote[k] = DeleteRemote(rem)  # replaced by the other kind: first the old one goes
            elif loc.kind == "file":
                transfers.append(Upload(loc, rem.rev if rem is not None else None))
            else:
                first.append(MkdirRemote(loc))
        elif remote_changed and not local_changed:
            if rem is None:
                assert loc is not None and was is not None
                del_local[k] = DeleteLocal(loc, was.node)
            elif loc is not None and loc.kind != rem.kind:
                assert was is not None
                del_local[k] = DeleteLocal(loc, was.node)  # replaced by the other kind: first the old one goes
            elif rem.kind == "file":
                transfers.append(Download(rem, loc))
            else:
                first.append(MkdirLocal(rem))
        else:
            if loc is None:
                assert rem is not None
                (transfers if rem.kind == "file" else first).append(Download(rem, None) if rem.kind == "file" else MkdirLocal(rem))
            elif rem is None:
                if ro:
                    blocked.append(Blocked(loc.path, "changed locally in a read-only folder"))
                elif loc.kind == "file":
                    transfers.append(Upload(loc, None))
                else:
                    first.append(MkdirRemote(loc))
            else:
                first.append(ConflictCopy(loc.rel, conflicted(loc.path, loc.kind == "folder"), "changed on both sides"))

    # Folders go only when everything below them goes too; deepest first.
    lidx = _KeyIndex(L)
    ridx = _KeyIndex(R)
    deletes: list[Op] = []
    for k in sorted(del_local, key=lambda k: -_depth(del_local[k].local.path)):
        if del_local[k].local.kind == "folder" and not all(d in del_local for d in lidx.below(k)):
            del del_local[k]
            continue
        deletes.append(del_local[k])
    for k in sorted(del_remote, key=lambda k: -_depth(del_remote[k].remote.path)):
        if del_remote[k].remote.kind == "folder" and not all(d in del_remote for d in ridx.below(k)):
            del del_remote[k]
            continue
        deletes.append(del_remote[k])
    first.sort(key=lambda op: _depth(_op_path(op)))
    result = first + transfers + deletes
    return result if result else blocked


def _op_path(op: Op) -> str:
    if isinstance(op, (MkdirLocal, Adopt, Download, DeleteRemote)):
        return op.remote.path
    if isinstance(op, (MkdirRemote, Upload, DeleteLocal)):
        return op.local.path
    if isinstance(op, ConflictCopy):
        return op.new_path
    return paths.ROOT


def _name(path: str) -> str:
    return paths.split(path)[1]


def _blocked_parent(path: str, tree: Mapping[str, LocalItem] | Mapping[str, RemoteItem]) -> bool:
    """True when an ancestor of ``path`` is a file in ``tree`` (a move there cannot work)."""
    for a in paths.ancestors(path):
        it = tree.get(paths.key(a))
        if it is not None and it.kind == "file":
            return True
    return False


def blocked_only(ops: Sequence[Op]) -> bool:
    return all(isinstance(o, Blocked) for o in ops)


__all__ = [
    "MOUNT_NODE",
    "Adopt",
    "BaseItem",
    "Blocked",
    "ConflictCopy",
    "Context",
    "DeleteLocal",
    "DeleteRemote",
    "Download",
    "Forget",
    "LocalItem",
    "MkdirLocal",
    "MkdirRemote",
    "MoveLocal",
    "MoveRemote",
    "NodeKey",
    "Op",
    "RecordMove",
    "RemoteItem",
    "Upload",
    "agreed",
    "blocked_only",
    "mount_of",
    "plan",
    "plan_phases",
]

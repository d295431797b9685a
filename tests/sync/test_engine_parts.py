"""Small contracts of the sync engine's parts that the end-to-end tests do not pin down."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cubby.client.heap import YOUNG_THRESHOLD, gc_frozen, gc_paused
from cubby.client.sync import planner as P
from tests.sync.conftest import Clients, local_tree


def test_gc_paused_restores_the_collector_even_when_the_step_fails() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("a scan that fails")
    assert gc.isenabled()


def test_gc_paused_leaves_a_collector_someone_else_disabled_disabled() -> None:
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_gc_frozen_gives_back_the_objects_and_the_thresholds_even_when_the_step_fails() -> None:
    kept = [object() for _ in range(3)]  # alive before: frozen while the step runs
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), gc_frozen():
        assert gc.get_freeze_count() > 0 and gc.get_threshold()[0] == YOUNG_THRESHOLD
        raise RuntimeError("an upload that fails")
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == before and kept


def test_a_settled_plan_is_reused_only_while_nothing_it_read_changed(clients: Clients) -> None:
    """A pass with nothing changed skips the planner (`SyncEngine._plan`), and any change to
    what a plan reads still makes a real one: a local edit, a remote edit, new ignore rules, a
    file replaced by something that is not synced, a folder removed."""
    a, b = clients.new("a"), clients.new("b")
    (a.root / "d").mkdir()
    (a.root / "d" / "x.txt").write_bytes(b"one")
    (a.root / "y.txt").write_bytes(b"two")
    clients.settle()
    planned: list[int] = []
    real = P.plan

    def counting(*args: Any, **kw: Any) -> list[P.Op]:
        planned.append(1)
        return real(*args, **kw)

    try:
        P.plan = counting  # type: ignore[assignment]
        assert a.run_once().converged and not planned  # nothing changed: no plan made

        (b.root / "y.txt").write_bytes(b"two, edited on b")
        assert b.run_once().applied == {"Upload": 1}
        assert a.run_once().applied == {"Download": 1}  # the journal moved: a real plan
        assert (a.root / "y.txt").read_bytes() == b"two, edited on b"

        (a.root / ".cubbyignore").write_text("x.txt\n")
        a.run_once()
        planned.clear()
        (a.root / ".cubbyignore").write_text("")  # same scan of d/x.txt, other rules
        a.run_once()
        assert planned

        os.unlink(a.root / "d" / "x.txt")
        os.mkfifo(a.root / "d" / "x.txt")  # not a file any more: not synced, so deleted there
        assert a.run_once().applied == {"DeleteRemote": 1}
        os.unlink(a.root / "d" / "x.txt")
        os.rmdir(a.root / "d")
        assert a.run_once().applied == {"DeleteRemote": 1}
        clients.settle()
        assert local_tree(b.root) == {"y.txt": b"two, edited on b", ".cubbyignore": b""}
    finally:
        P.plan = real  # type: ignore[assignment]


_ONE_PASS = """
import json, sys
from pathlib import Path
from cubby.client.api import ApiClient
from cubby.client.sync import planner as P
from cubby.client.sync.engine import SyncEngine

url, token, root, host = sys.argv[1:5]
planned, sent = [], []
real = P.plan
def counting(*args, **kw):
    planned.append(1)
    return real(*args, **kw)
P.plan = counting
api = ApiClient(url, token)
api.on_request.append(lambda method, path: sent.append(path))
eng = SyncEngine(Path(root), api, host=host)
rep = eng.run_once()
print(json.dumps({"converged": rep.converged, "applied": rep.applied, "hashed": eng.last_scan.hashed,
                  "planned": len(planned), "requests": sent, "scanned": len(eng.last_scan.items)}))
eng.close()
api.close()
"""


def _pass_in_new_process(clients: Clients, root: Any, host: str) -> dict[str, Any]:
    """One `run_once` in a new Python process (what `cubby sync --once` is), and what it did."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", _ONE_PASS, clients.server.url, clients.token, str(root), host],
        check=True, capture_output=True, text=True,
    )
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_a_no_op_pass_in_a_new_process_hashes_and_plans_nothing(clients: Clients) -> None:
    """The settled plan's fingerprint is kept in the state database: a new process with
    nothing changed stats each file, asks the server for its heads (one request), hashes
    nothing and makes no plan; a change on either side, made in between, still makes one."""
    a, b = clients.new("a"), clients.new("b")
    (a.root / "d").mkdir()
    for i in range(30):
        (a.root / "d" / f"f{i}.txt").write_bytes(f"file {i}".encode())
    clients.settle()
    a.close()
    a.api.close()
    clients.engines.remove(a)

    quiet = _pass_in_new_process(clients, a.root, "a")
    assert quiet == {"converged": True, "applied": {}, "hashed": 0, "planned": 0, "requests": ["/api/v1/account"], "scanned": 0}
    assert _pass_in_new_process(clients, a.root, "a")["planned"] == 0  # and again

    (a.root / "d" / "f3.txt").write_bytes(b"edited here")
    local = _pass_in_new_process(clients, a.root, "a")
    assert local["applied"] == {"Upload": 1} and local["planned"] >= 1
    assert _pass_in_new_process(clients, a.root, "a")["planned"] == 0

    (b.root / "d" / "f4.txt").write_bytes(b"edited there")
    assert b.run_once().applied == {"Download": 1, "Upload": 1}  # a's edit comes, b's goes
    remote = _pass_in_new_process(clients, a.root, "a")
    assert remote["applied"] == {"Download": 1} and remote["planned"] >= 1
    assert (a.root / "d" / "f4.txt").read_bytes() == b"edited there"

    (a.root / ".cubbyignore").write_text("f5.txt\n")  # other rules, same files: a real plan
    assert _pass_in_new_process(clients, a.root, "a")["planned"] >= 1


def _synced_and_closed(clients: Clients, files: int) -> Path:
    """A client "a" that synced ``files`` files in ``d`` and settled (a listing written down),
    then closed, as a process that ended: its folder."""
    a = clients.new("a")
    (a.root / "d").mkdir()
    for i in range(files):
        (a.root / "d" / f"f{i}.txt").write_bytes(f"file {i}".encode())
    clients.settle()
    assert a.state.settled_listing() is not None
    a.close()
    a.api.close()
    clients.engines.remove(a)
    return a.root


def _edit_same_size_next_nanosecond(root: Path) -> None:
    st = os.stat(root / "d" / "f1.txt")
    (root / "d" / "f1.txt").write_bytes(b"FILE 1")
    os.utime(root / "d" / "f1.txt", ns=(st.st_atime_ns, st.st_mtime_ns + 1))


@pytest.mark.parametrize(
    ("change", "applied"),
    [
        (_edit_same_size_next_nanosecond, {"Upload": 1}),
        (lambda root: os.chmod(root / "d" / "f2.txt", 0o755), {"Upload": 1}),
        (lambda root: (root / "d" / "deep").mkdir(), {"MkdirRemote": 1}),
        (lambda root: os.unlink(root / "d" / "f3.txt"), {"DeleteRemote": 1}),
        (lambda root: os.rename(root / "d" / "f4.txt", root / "d" / "g4.txt"), {"MoveRemote": 1}),
        (lambda root: os.symlink("f5.txt", root / "d" / "link"), {"Upload": 1}),
    ],
)
def test_a_new_process_takes_an_unchanged_listing_for_the_settled_plan_and_sees_any_change(
    clients: Clients, change: Callable[[Path], object], applied: dict[str, int]
) -> None:
    """When the settled plan's scan hashed nothing, a new process compares the tree's listing
    (names and stat fields of every folder) with the one that plan saw, scanning nothing
    when they are equal (the state folder, which every pass writes to, is no part of it);
    any change on disk, however small, still makes a full scan and a real plan."""
    root = _synced_and_closed(clients, 8)
    for _ in range(2):
        assert _pass_in_new_process(clients, root, "a")["scanned"] == 0
    change(root)
    changed = _pass_in_new_process(clients, root, "a")
    assert applied.items() <= changed["applied"].items() and changed["planned"] >= 1 and changed["scanned"] > 0
    assert _pass_in_new_process(clients, root, "a")["scanned"] == 0


def test_a_listing_is_not_settled_when_its_scan_hashed_anything_nor_after_a_remote_change(clients: Clients) -> None:
    """A settled plan whose scan hashed a file (touched, same content) leaves no listing to
    compare with: a file hashed then, or found changing, is read again by the next scan. A
    change on the server moves the state's epoch, so a listing settled before it is not
    taken for the plan after it."""
    a, b = clients.new("a"), clients.new("b")
    (a.root / "x.txt").write_bytes(b"x")
    clients.settle()
    os.utime(a.root / "x.txt", ns=(1, 1))
    rep = a.run_once()
    assert rep.converged and not rep.applied and a.last_scan.hashed == 1
    assert a.state.settled() is not None and a.state.settled_listing() is None
    assert a.run_once().converged and a.state.settled_listing() is not None  # settled again, nothing hashed
    a.close()
    a.api.close()
    clients.engines.remove(a)
    (b.root / "y.txt").write_bytes(b"from b")
    assert b.run_once().applied == {"Upload": 1}
    remote = _pass_in_new_process(clients, a.root, "a")
    assert remote["applied"] == {"Download": 1} and remote["scanned"] > 0
    assert (a.root / "y.txt").read_bytes() == b"from b"


def test_a_running_client_that_began_with_the_settled_listing_keeps_its_folders_from_its_next_scan(clients: Clients) -> None:
    """A daemon whose first pass took the settled listing (no scan) keeps its next scan's
    folders, so that the pass after takes them whole, as a running client's passes do."""
    _synced_and_closed(clients, 5)
    b = clients.new("a")  # the same folder, a new engine: a new process's
    assert b.run_once().converged and not b.last_scan.items
    assert b.run_once().converged and set(b.last_scan.folders) == {"", "d"}
    kept = b.last_scan.items
    assert b.run_once().converged and all(x is y for x, y in zip(b.last_scan.items, kept, strict=True))


def test_the_walk_reads_folders_on_a_worker_in_the_order_and_with_the_rules_of_one_thread(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The folders are read on a worker thread while the caller names the items: the items,
    their order, ignored folders (not descended into), names cubby cannot store and the
    previous scan's items reused must all be what a walk on one thread gives."""
    from concurrent.futures import ThreadPoolExecutor

    from cubby.client.sync.ignore import IgnoreRules
    from cubby.client.sync.scanner import scan, walk
    from cubby.client.sync.state import StateDb

    root = tmp_path / "root"
    for d in ("a/b/c", "a/skip/deep", "e", "bad.", "bad./x", "z/y/x/w"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for f in ("a/1", "a/b/2", "a/b/c/3", "a/skip/4", "a/skip/deep/5", "e/6.tmp", "e/7", "bad./x/8", "z/y/x/w/9", "10"):
        (root / f).write_bytes(f.encode())
    os.symlink("a/1", root / "link")
    os.mkfifo(root / "fifo")
    (root / ".cubbyignore").write_text("skip/\n*.tmp\n")
    rules = IgnoreRules.load(root)
    state = StateDb(tmp_path / "state.db")
    with ThreadPoolExecutor(2) as pool:
        one = list(walk(root, rules))
        two = list(walk(root, rules, None, pool))
        assert [(r, d, p) for r, _, d, p in one] == [(r, d, p) for r, _, d, p in two]
        rels = [r for r, *_ in two]
        assert "a/skip" not in rels and "a/skip/4" not in rels and "e/6.tmp" not in rels and "fifo" not in rels
        assert "bad./x/8" in rels and {r: d for r, _, d, _ in two}["bad./x/8"] is None  # listed, not storable
        assert rels.index("a") < rels.index("a/b") < rels.index("a/b/c/3")
        first = scan(root, state, pool)
        again = list(walk(root, rules, first, pool))
        assert [(r, d) for r, _, d, _ in again] == [(r, d) for r, _, d, _ in two]
        assert sum(p is not None for *_, p in again) == len(first.items)  # every item reused
        walking = walk(root, rules, None, pool)
        next(iter(walking))
        walking.close()  # a caller that stops early stops the reader
    state.close()

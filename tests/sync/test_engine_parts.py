"""Small contracts of the sync engine's parts that the end-to-end tests do not pin down."""

from __future__ import annotations

import gc
import os
from typing import Any

import pytest

from cubby.client.sync import planner as P
from cubby.client.sync.base import gc_paused
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
api.http.event_hooks["request"].append(lambda r: sent.append(r.url.path))
eng = SyncEngine(Path(root), api, host=host)
rep = eng.run_once()
print(json.dumps({"converged": rep.converged, "applied": rep.applied, "hashed": eng.last_scan.hashed,
                  "planned": len(planned), "requests": sent}))
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
    assert quiet == {"converged": True, "applied": {}, "hashed": 0, "planned": 0, "requests": ["/api/v1/account"]}
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

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

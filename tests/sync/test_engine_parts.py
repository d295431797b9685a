"""Small contracts of the sync engine's parts that the end-to-end tests do not pin down."""

from __future__ import annotations

import gc

import pytest

from cubby.client.sync.base import gc_paused


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

"""A write that outlives its fences' life keeps them (`cubby.cache.fencekeeper`): no reader
takes a lease on, and fills, a key whose writer has not committed yet."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest

from cubby.cache import memory
from cubby.cache.base import CacheUnavailable
from cubby.cache.fencekeeper import FenceKeeper
from cubby.cache.memory import MemoryCache
from cubby.cache.store import CachedStore
from cubby.metadata.store import SqlMetadataStore


def _reader_during_slow_write(plain: SqlMetadataStore, renew_every: float) -> tuple[bytes | None, str | None]:
    """What a reader's `get` of ``head:5`` finds 1 s into a 1.6 s write, with fences that
    live 0.5 s, renewed every ``renew_every`` seconds."""
    cache = MemoryCache()
    store = CachedStore(plain, cache)
    store.fences.every = renew_every
    seen: list[tuple[bytes | None, str | None]] = []
    try:
        with store.writing(ns_ids=[5]):
            time.sleep(1.0)  # the write is still running: a lock wait, a stalled database
            seen.append(cache.get("head:5"))
            time.sleep(0.6)
    finally:
        store.fences.close()
    return seen[0]


def test_a_slow_writes_fence_is_renewed_so_no_reader_gets_a_lease(
    plain: SqlMetadataStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "LEASE_SECONDS", 0.5)
    # Without renewal the fence expires mid-write and the reader gets a lease (then fills the
    # old state, which a writer killed after its commit would leave behind): the hole.
    assert _reader_during_slow_write(plain, renew_every=60.0)[1] is not None
    # Renewed, the key is still fenced: a miss with nobody's lease, read from the database.
    assert _reader_during_slow_write(plain, renew_every=0.15) == (None, None)


def test_renewal_runs_only_for_running_writes_that_are_due() -> None:
    now = [100.0]
    calls: list[tuple[list[str], str]] = []

    def fence(keys: Sequence[str], token: str) -> None:
        calls.append((list(keys), token))

    keeper = FenceKeeper(fence, every=3.0, clock=lambda: now[0], background=False)
    try:
        with keeper.holding(["head:1"], "t1"):
            assert keeper.renew_due() == 0  # just fenced
            now[0] += 3.0
            with keeper.holding(["head:2"], "t2"):
                assert keeper.renew_due() == 1 and calls == [(["head:1"], "t1")]
                assert keeper.renew_due() == 0  # next one in 3 s
                now[0] += 3.0
                assert keeper.renew_due() == 2
        now[0] += 30.0
        assert keeper.renew_due() == 0  # ended writes are not renewed
        assert len(calls) == 3
    finally:
        keeper.close()


def test_a_failed_renewal_is_logged_and_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    tries: list[str] = []

    def fence(keys: Sequence[str], token: str) -> None:
        tries.append(token)
        if len(tries) == 1:
            raise CacheUnavailable("the cache did not answer")

    keeper = FenceKeeper(fence, every=1.0, clock=lambda: now[0], background=False)
    try:
        with keeper.holding(["head:1"], "t"):
            now[0] = 1.0
            assert keeper.renew_due() == 0
            assert "fence failed" in caplog.text
            now[0] = 2.0
            assert keeper.renew_due() == 1
    finally:
        keeper.close()
    assert tries == ["t", "t"]


def test_closing_stops_the_thread() -> None:
    def keepers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "cubby-fence-keeper" and t.is_alive()}

    before = keepers()  # another test's store left open may have one
    keeper = FenceKeeper(lambda keys, token: None, every=0.05)
    with keeper.holding(["head:1"], "t"):
        time.sleep(0.2)
        assert len(keepers() - before) == 1
    keeper.close()
    assert keepers() <= before

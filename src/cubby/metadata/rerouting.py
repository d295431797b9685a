"""`Rerouting`: the metadata store, with each namespace's call asked again while it moves.

While `cubby admin move-namespace` moves a namespace (`cubby.metadata.rebalance`), a call
routed by the placement it looked up can reach a copy that no longer serves it:

- the old copy is sealed: a write gets `NamespaceMoving` (from the namespace lock);
- the old copy is gone (the move finished after the lookup): the call gets `NamespaceGone`.

Both changed nothing, so `Rerouting` forgets the cached placement, pauses (backoff from 10 ms
to 200 ms) and calls again: the store looks the placement up afresh and reaches the new
shard. After `WAIT_SECONDS` the error goes to the client (both are retryable or say what
happened). A namespace still sealed after a second of waiting may belong to a mover that
died: recovery runs for it once (it touches only a move whose owner is gone).

Behaviour by wrapping: `Rerouting` wraps a `SqlMetadataStore` and passes every attribute
through; only the calls named in `NS_ARG` (those keyed by one namespace) get the retry. The
retry runs below the metadata cache, so one request is still one fenced write there. On a
single database nothing moves and the wrapper is not used.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from cubby.errors import NamespaceGone, NamespaceMoving
from cubby.metadata.shards import ShardRouter

T = TypeVar("T")

WAIT_SECONDS = 15.0
"""How long a call waits for a moving namespace before its error goes to the client (the seal
lasts two short transactions; a move whose owner died is recovered meanwhile)."""

NS_ARG: dict[str, int] = {
    "head": 0, "stat": 0, "list": 0, "history": 0, "blocklist": 0, "blocklists": 0, "journal": 0, "deleted": 0,
    "ingest_chunks": 0, "commit": 1, "commit_many": 1, "mkdir": 1, "mkdir_many": 1, "delete": 1, "move": 1,
    "restore": 1, "accept_proofs": 1,
}
"""The store's calls keyed by one namespace, and the position of its id among their arguments."""


def rerouted(router: ShardRouter, ns_id: int, call: Callable[[], T], *, wait: float = WAIT_SECONDS) -> T:
    """``call()``, called again with a fresh placement while ``ns_id`` moves (module docstring)."""
    started = time.monotonic()
    pause = 0.01
    recovered = False
    while True:
        try:
            return call()
        except (NamespaceMoving, NamespaceGone):
            if time.monotonic() - started + pause > wait:
                raise
        router.forget(int(ns_id))
        if not recovered and time.monotonic() - started > 1.0:
            from cubby.metadata.rebalance import NamespaceMover

            recovered = True
            NamespaceMover(router).recover(int(ns_id))
        time.sleep(pause)
        pause = min(0.2, pause * 2)


class Rerouting:
    """A `SqlMetadataStore` whose namespace-keyed calls are `rerouted` (module docstring)."""

    def __init__(self, inner: Any, *, wait: float = WAIT_SECONDS) -> None:
        self.inner = inner
        self.router: ShardRouter = inner.router
        self.wait = wait

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        pos = NS_ARG.get(name)
        if pos is None or not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kw: Any) -> Any:
            ns_id = kw["ns_id"] if "ns_id" in kw else args[pos]
            return rerouted(self.router, int(ns_id), lambda: attr(*args, **kw), wait=self.wait)

        return call


__all__ = ["NS_ARG", "WAIT_SECONDS", "Rerouting", "rerouted"]

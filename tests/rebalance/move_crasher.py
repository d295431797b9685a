"""A process for the namespace-move crash test: opens the sharded store (directory = first
URL, shards ``a`` and ``b``), moves one namespace to shard ``b`` and kills itself with SIGKILL
right after the given step commits (the mover's fault hook)."""

from __future__ import annotations

import os
import signal
import sys

from cubby.metadata.rebalance import NamespaceMover
from cubby.metadata.store import open_store


def main() -> None:
    a_url, b_url, step, ns_id = sys.argv[1:5]
    store = open_store(a_url, shards={"a": a_url, "b": b_url}, migrate_schema=False)

    def fault(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    NamespaceMover(store.router, fault=fault, grace=0).move(int(ns_id), "b")
    print("finished without being killed", flush=True)


if __name__ == "__main__":
    main()

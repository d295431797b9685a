"""A process for the garbage collection crash test: collects and repacks, and kills itself
with SIGKILL at the given step (the fault hooks of `collect_garbage` and `compact`)."""

from __future__ import annotations

import os
import signal
import sys

from cubby.blockstore.opener import open_block_store
from cubby.metadata.store import open_store


def main() -> None:
    url, blocks, step = sys.argv[1:4]
    store = open_store(url, migrate_schema=False)
    packs = open_block_store(blocks, store.db)

    def fault(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    store.collect_garbage(packs, 0, fault=fault)
    packs.compact(threshold=0.1, grace=0, fault=fault)
    print("finished without being killed", flush=True)


if __name__ == "__main__":
    main()

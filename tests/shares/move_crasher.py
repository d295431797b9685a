"""A process for the cross-namespace move crash test: runs one move and kills itself with
SIGKILL right after the given step commits (the store's fault hook)."""

from __future__ import annotations

import os
import signal
import sys

from cubby.metadata.store import open_store


def main() -> None:
    url, step, user_id, src_ns, src, dst_ns, dst = sys.argv[1:8]
    store = open_store(url, migrate_schema=False)

    def fault(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    store.moves.fault = fault
    store.moves.move(int(user_id), int(src_ns), src, int(dst_ns), dst)
    print("finished without being killed", flush=True)


if __name__ == "__main__":
    main()

"""A process for the cross-namespace move crash test: runs one move and kills itself with
SIGKILL right after the given step commits (the store's fault hook). With a ninth argument
``pause``, it instead says ``paused`` and sleeps 4 s at that step, then finishes the move: a
live move between two steps, for recovery in another process to leave alone."""

from __future__ import annotations

import os
import signal
import sys
import time

from cubby.metadata.store import open_store


def main() -> None:
    url, step, user_id, src_ns, src, dst_ns, dst = sys.argv[1:8]
    pause = sys.argv[8:9] == ["pause"]
    store = open_store(url, migrate_schema=False)

    def fault(name: str) -> None:
        if name == step and pause:
            print("paused", flush=True)
            time.sleep(4)
        elif name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    store.moves.fault = fault
    store.moves.move(int(user_id), int(src_ns), src, int(dst_ns), dst)
    print("finished without being killed", flush=True)


if __name__ == "__main__":
    main()

"""A process for the cross-namespace move crash test: runs one move and kills itself with
SIGKILL right after the given step commits (the store's fault hook). The store is a database
URL, or a directory URL followed by the shards as JSON (``{"near": URL, "far": URL}``, new
namespaces on ``far``). With a last argument ``pause``, it instead says ``paused`` at that
step and waits for a line on its standard input, then finishes the move: a live move between
two steps, for recovery in another process to leave alone."""

from __future__ import annotations

import json
import os
import signal
import sys

from cubby.metadata.store import open_store


def main() -> None:
    args = sys.argv[1:]
    shards = json.loads(args.pop(1)) if len(args) > 1 and args[1].startswith("{") else None
    url, step, user_id, src_ns, src, dst_ns, dst = args[:7]
    pause = args[7:8] == ["pause"]
    store = open_store(url, shards=shards, place_new="far" if shards else None, migrate_schema=False)

    def fault(name: str) -> None:
        if name == step and pause:
            print("paused", flush=True)
            sys.stdin.readline()
        elif name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    store.moves.fault = fault
    store.moves.move(int(user_id), int(src_ns), src, int(dst_ns), dst)
    print("finished without being killed", flush=True)


if __name__ == "__main__":
    main()

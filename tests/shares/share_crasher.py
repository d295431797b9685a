"""A process for the cross-shard share crash test: shares a folder of the owner's root (shard
``near``) as a new namespace on shard ``far`` and kills itself with SIGKILL right after the given
step commits (`cubby.metadata.share_steps.STEPS`, through the steps' fault hook)."""

from __future__ import annotations

import json
import os
import signal
import sys

from cubby.metadata.store import open_store


def main() -> None:
    directory, shards, step, user_id, root_ns, path, invitee = sys.argv[1:8]
    store = open_store(directory, shards=json.loads(shards), place_new="far", migrate_schema=False)
    assert store.sharing.sharded is not None

    def fault(name: str) -> None:
        if name == step:
            os.kill(os.getpid(), signal.SIGKILL)

    store.sharing.sharded.steps.fault = fault
    store.sharing.share(int(user_id), int(root_ns), path, invitee, "editor")
    print("finished without being killed", flush=True)


if __name__ == "__main__":
    main()

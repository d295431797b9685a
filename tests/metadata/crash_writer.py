"""A writer process for the crash test: commits files forever until it is killed."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from cubby.blockstore.opener import open_block_store
from cubby.metadata.store import open_store
from cubby.model import ChunkRef, CommitRequest


def main() -> None:
    url, blocks_dir, user_id, ns = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    store = open_store(url, migrate_schema=False)
    blocks = open_block_store(str(blocks_dir), store.db)  # packs, as the server stores them
    i = 0
    print("ready", flush=True)
    while True:
        items = [(hashlib.sha256(d).hexdigest(), d) for d in (os.urandom(20_000), os.urandom(30_000))]
        req = CommitRequest(f"/dir{i % 5}/f{i}", 50_000, tuple(ChunkRef(h, len(d)) for h, d in items))
        store.ingest_chunks(ns, items, blocks)
        store.commit(user_id, ns, req)
        if i % 3 == 0:
            store.move(user_id, ns, f"/dir{i % 5}/f{i}", f"/moved/f{i}")
        i += 1


if __name__ == "__main__":
    main()

"""A writer killed with SIGKILL mid-commit leaves the old state or the new one, never a mix."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import select

from cubby.blockstore.opener import open_block_store
from cubby.core.hashing import sha256_hex
from cubby.metadata.schema import blocks, file_revs, namespaces, nodes
from cubby.metadata.store import open_store

HERE = Path(__file__).parent
ROOT = HERE.parent.parent


def _check_consistent(url: str, blocks_dir: Path, ns: int) -> int:
    store = open_store(url)
    bs = open_block_store(str(blocks_dir), store.db)
    try:
        head = store.head(ns)
        journal = store.journal(ns, 0, limit=100_000)
        assert [j.jid for j in journal] == list(range(1, head + 1)), "journal has a gap or a tail past head"
        with store.db.reader.begin() as conn:
            assert conn.execute(select(namespaces.c.head).where(namespaces.c.ns_id == ns)).scalar_one() == head
            live = conn.execute(select(nodes).where(nodes.c.ns_id == ns, nodes.c.deleted.is_(False))).all()
            revs = {(r.node_id, r.rev): r for r in conn.execute(select(file_revs).where(file_revs.c.ns_id == ns))}
            held = {r.hash for r in conn.execute(select(blocks.c.hash))}
        by_id = {n.node_id: n for n in live}
        for n in live:
            assert n.rev <= head
            if n.parent_id:
                assert n.parent_id in by_id and by_id[n.parent_id].kind == "folder", f"{n.path} lost its parent"
            if n.kind == "file":
                fr = revs[(n.node_id, n.content_rev)]
                for h, _size in json.loads(fr.blocklist):
                    assert h in held and bs.has(h), f"{n.path} references missing chunk {h}"
        for name in bs.iterate():
            assert sha256_hex(bs.get(name)) == name, f"chunk {name} does not match its bytes"
        return head
    finally:
        store.close()


def test_kill_mid_commit_leaves_a_consistent_store(db_url, tmp_path):
    store = open_store(db_url)
    user, _ = store.create_user("alice")
    store.close()
    blocks_dir = tmp_path / "blocks"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    rng = random.Random(1234)
    heads = []
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "crash_writer.py"), db_url, str(blocks_dir), str(user.id), str(user.root_ns)],
            stdout=subprocess.PIPE, env=env,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        heads.append(_check_consistent(db_url, blocks_dir, user.root_ns))
    assert heads == sorted(heads) and heads[-1] > 0, heads

"""Garbage collection and repacking killed with SIGKILL at each step never lose a chunk that a
file references, nor one that is referenced again afterwards (issue 10.10, 11.4)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cubby.blockstore.opener import open_block_store
from cubby.metadata.store import SqlMetadataStore, open_store
from tests.conftest import db_url_for
from tests.helpers.fresh_db import fresh_database
from tests.metadata.conftest import random_chunks, request

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
STEPS = ["sweeping", "swept", "reclaiming", "reclaimed", "retired", "copied", "switched", "deleted"]


def _commit(store: SqlMetadataStore, blocks, user_id: int, ns: int, path: str, items) -> None:
    store.ingest_chunks(ns, items, blocks)
    assert store.commit(user_id, ns, request(path, items)).committed


def _check_files(store: SqlMetadataStore, blocks, ns: int, files: dict[str, list[tuple[str, bytes]]]) -> None:
    for path, items in files.items():
        _, chunks = store.blocklist(ns, path)
        assert [c.hash for c in chunks] == [h for h, _ in items]
        for h, data in items:
            assert blocks.get(h) == data, f"{path}: chunk {h} is missing or wrong"


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_gc_killed_at_each_step_loses_no_referenced_chunk(engine, step, tmp_path, tmp_path_factory):
    url = db_url_for(engine, tmp_path_factory)
    if engine != "sqlite":
        fresh_database(url)
    folder = str(tmp_path / "blocks")
    store = open_store(url)
    blocks = open_block_store(folder, store.db)
    user, _ = store.create_user("alice")
    ns = user.root_ns
    files: dict[str, list[tuple[str, bytes]]] = {}
    # A pack with live and dead chunks (rewritten), a wholly dead pack (retired), and a
    # small live pack (merged).
    live1, dead1 = random_chunks(6, 20_000), random_chunks(18, 20_000)
    store.ingest_chunks(ns, live1 + dead1, blocks)
    assert store.commit(user.id, ns, request("/one", live1)).committed
    files["/one"] = live1
    dead2 = random_chunks(10, 5_000)
    store.ingest_chunks(ns, dead2, blocks)
    files["/two"] = random_chunks(3, 3_000)
    _commit(store, blocks, user.id, ns, "/two", files["/two"])
    store.close()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, str(HERE / "gc_crasher.py"), url, folder, step], env=env, capture_output=True, timeout=300, check=False
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]

    store = open_store(url)
    try:
        blocks = open_block_store(folder, store.db)
        _check_files(store, blocks, ns, files)
        # Chunks the collector took (or was taking) are referenced again: uploaded, committed.
        files["/again1"] = dead1[:5]
        _commit(store, blocks, user.id, ns, "/again1", files["/again1"])
        files["/again2"] = dead2[:3]
        _commit(store, blocks, user.id, ns, "/again2", files["/again2"])
        _check_files(store, blocks, ns, files)
        # A complete collection and repack afterwards keeps them all, and frees the rest.
        store.collect_garbage(blocks, 0)
        blocks.compact(threshold=0.1, grace=0)
        _check_files(store, blocks, ns, files)
        for h, _ in dead1[5:] + dead2[3:]:
            assert not blocks.has(h)
        store.collect_garbage(blocks, 0)
        blocks.compact(threshold=0.1, grace=0)
        _check_files(store, blocks, ns, files)
    finally:
        store.close()

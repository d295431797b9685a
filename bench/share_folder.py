"""Benchmark: the time to share a folder of 10,000 files, and that it does not grow with the
folder's byte size.

Two folders with the same number of files and chunks are shared: SMALL (each file one 1 KiB
chunk: 10 MiB in all) and LARGE (each file one 4 MiB chunk: 40 GiB in all, stored once thanks
to deduplication, so the benchmark needs little disk). Sharing is metadata only, so the ratio
LARGE / SMALL must stay near 1; the block store's size is printed before and after to show that
no chunk is written. Each share is measured several times on fresh copies and the best kept.

    python bench/share_folder.py [--files 10000] [--repeat 3] [--db URL]

Prints one line per folder and a JSON summary line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py
from machine import describe, load_average, summary_line

from cubby.blockstore.local import LocalBlockStore
from cubby.metadata.store import SqlMetadataStore, open_store
from cubby.model import ChunkRef, CommitRequest


def store_size(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def fill(store: SqlMetadataStore, blocks: LocalBlockStore, user_id: int, ns: int, folder: str, n: int, size: int) -> None:
    """``n`` files of ``size`` bytes each below ``folder``, all made of one shared chunk."""
    data = hashlib.sha256(f"{folder}{size}".encode()).digest() * (size // 32)
    ref = ChunkRef(hashlib.sha256(data).hexdigest(), len(data))
    store.ingest_chunks(ns, [(ref.hash, data)], blocks)
    for i in range(0, n, 1000):
        reqs = [
            CommitRequest(f"{folder}/d{j % 100}/f{j}.bin", len(data), (ref,)) for j in range(i, min(n, i + 1000))
        ]
        out = store.commit_many(user_id, ns, reqs)
        assert all(getattr(r, "committed", False) for r in out), out[:3]


def measure(store: SqlMetadataStore, blocks: LocalBlockStore, root: Path, files: int, size: int, repeat: int) -> dict:
    best = float("inf")
    written = 0
    for k in range(repeat):
        owner, _ = store.create_user(f"owner-{size}-{k}-{os.getpid()}")
        member = f"member-{size}-{k}-{os.getpid()}"
        store.create_user(member)
        fill(store, blocks, owner.id, owner.root_ns, "/Folder", files, size)
        before = store_size(root)
        t0 = time.perf_counter()
        store.sharing.share(owner.id, owner.root_ns, "/Folder", member, "editor")
        best = min(best, time.perf_counter() - t0)
        written += store_size(root) - before
    return {"files": files, "bytes": files * size, "share_seconds": best, "bytes_written": written}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--db", default=None, help="SQLAlchemy URL of an empty metadata database (default: SQLite in a temp dir)")
    args = ap.parse_args()
    info = describe(Path(tempfile.gettempdir()))
    print(summary_line(info))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "blocks"
        store = open_store(args.db or f"sqlite:///{tmp}/meta.db")
        blocks = LocalBlockStore(root)
        try:
            small = measure(store, blocks, root, args.files, 1024, args.repeat)
            large = measure(store, blocks, root, args.files, 4 * 1024 * 1024, args.repeat)
        finally:
            store.close()
    for r in (small, large):
        print(
            f"share {r['files']} files, {r['bytes'] / 2**30:8.2f} GiB: {r['share_seconds'] * 1000:8.1f} ms"
            f"  ({r['files'] / r['share_seconds']:,.0f} files/s, {r['bytes_written']} bytes of chunks written)"
        )
    ratio = large["share_seconds"] / small["share_seconds"]
    print(f"large / small: {ratio:.2f} (a share is metadata only: this stays near 1 whatever the bytes)")
    info["load_average_end"] = load_average()
    result = {
        "benchmark": "share_folder", "machine": info, "metadata": args.db or "sqlite",
        "small": small, "large": large, "ratio_large_to_small": round(ratio, 3),
    }
    out = Path(__file__).resolve().parent / "results" / "share_folder.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {out}")


if __name__ == "__main__":
    main()

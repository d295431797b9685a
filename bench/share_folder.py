"""Benchmark: the time to share a folder of 10,000 files, and that it does not grow with the
folder's byte size.

Two folders with the same number of files and chunks are shared: SMALL (each file one 1 KiB
chunk: 10 MiB in all) and LARGE (each file one 4 MiB chunk: 40 GiB in all, stored once thanks
to deduplication, so the benchmark needs little disk). Sharing is metadata only, so the ratio
LARGE / SMALL must stay near 1; the block store's size is printed before and after to show that
no chunk is written. Each share is measured several times on fresh copies and the best kept.

    python bench/share_folder.py [--files 10000] [--repeat 3] [--db URL]
    python bench/share_folder.py --shard near=URL --shard far=URL [--files 10000] [--fewer 1000]

With two ``--shard`` flags (empty databases; the first is also the directory) the share crosses
shards: the owner's root on ``near``, the new namespace on ``far``, so the share is the steps of
`cubby.metadata.share_steps` (freeze, copy, mount, publish). It then also shares a folder of
``--fewer`` files, and counts the SQL statements each share sent to each database: the cost
grows with the number of files, never with their bytes.

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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py
from machine import describe, load_average, summary_line
from sqlalchemy import event

from cubby.blockstore.local import LocalBlockStore
from cubby.metadata.schema import drop_all
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


class StatementCount:
    """SQL statements sent to each database of a store, counted at the cursor."""

    def __init__(self, store: SqlMetadataStore) -> None:
        self.counts: dict[str, int] = {}
        names = {id(db): name for name, db in store.router.shards.items()}
        for db in store.router.databases():
            name = names.get(id(db), "directory")
            for engine in {id(db.writer): db.writer, id(db.reader): db.reader}.values():
                event.listen(engine, "before_cursor_execute", self._counter(name))

    def _counter(self, name: str) -> Callable[..., None]:
        def count(*_args: object) -> None:
            self.counts[name] = self.counts.get(name, 0) + 1

        return count

    def total(self) -> dict[str, int]:
        return dict(self.counts)


def measure_across(owners: SqlMetadataStore, sharer: SqlMetadataStore, blocks: LocalBlockStore, root: Path,
                   files: int, size: int, repeat: int) -> dict:
    """The best of ``repeat`` shares of a folder of ``files`` files of ``size`` bytes, the
    owner's root on ``near`` (made through ``owners``), the new namespace on ``far`` (the share
    through ``sharer``): wall and CPU seconds of this process, and statements per database."""
    counter = StatementCount(sharer)
    best: dict = {}
    written = 0
    for k in range(repeat):
        owner, _ = owners.create_user(f"owner-{files}-{size}-{k}-{os.getpid()}")
        member = f"member-{files}-{size}-{k}-{os.getpid()}"
        sharer.create_user(member)
        fill(owners, blocks, owner.id, owner.root_ns, "/Folder", files, size)
        assert owners.router.placement(owner.root_ns).shard == "near"
        before_bytes = store_size(root)
        counter.counts.clear()
        t0, c0 = time.perf_counter(), time.process_time()
        ns = sharer.sharing.share(owner.id, owner.root_ns, "/Folder", member, "editor").ns_id
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert sharer.router.placement(ns).shard == "far"
        written += store_size(root) - before_bytes
        if not best or wall < best["share_seconds"]:
            best = {"files": files, "bytes": files * size, "share_seconds": wall, "cpu_seconds": cpu,
                    "statements": counter.total()}
    best["bytes_written"] = written
    return best


def main_across(args: argparse.Namespace) -> None:
    """The two-shard case (see the module docstring)."""
    shards = dict(s.split("=", 1) for s in args.shard)
    assert set(shards) == {"near", "far"}, "give --shard near=URL --shard far=URL"
    for url in shards.values():
        drop_all(url)
    info = describe(Path(tempfile.gettempdir()))
    print(summary_line(info))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "blocks"
        owners = open_store(shards["near"], shards=shards, place_new="near")
        sharer = open_store(shards["near"], shards=shards, place_new="far", migrate_schema=False)
        blocks = LocalBlockStore(root)
        try:
            fewer = measure_across(owners, sharer, blocks, root, args.fewer, 1024, args.repeat)
            small = measure_across(owners, sharer, blocks, root, args.files, 1024, args.repeat)
            large = measure_across(owners, sharer, blocks, root, args.files, 4 * 1024 * 1024, args.repeat)
        finally:
            owners.close()
            sharer.close()
    for r in (fewer, small, large):
        print(
            f"share across shards {r['files']:6d} files, {r['bytes'] / 2**30:8.2f} GiB: {r['share_seconds'] * 1000:8.1f} ms"
            f" wall, {r['cpu_seconds'] * 1000:8.1f} ms CPU here, statements {r['statements']},"
            f" {r['bytes_written']} bytes of chunks written"
        )
    ratio = large["share_seconds"] / small["share_seconds"]
    per_file = (small["share_seconds"] - fewer["share_seconds"]) / (small["files"] - fewer["files"])
    print(f"large / small (same files, 4096x the bytes): {ratio:.2f}; statements equal: {large['statements'] == small['statements']}")
    print(f"{small['files']} / {fewer['files']} files: {small['share_seconds'] / fewer['share_seconds']:.2f}x the time"
          f" ({per_file * 1e6:.0f} us per extra file)")
    info["load_average_end"] = load_average()
    result = {
        "benchmark": "share_folder_across_shards", "machine": info,
        "shards": {k: v.rsplit("@", 1)[-1] for k, v in shards.items()},
        "fewer": fewer, "small": small, "large": large, "ratio_large_to_small": round(ratio, 3),
    }
    out = Path(__file__).resolve().parent / "results" / "share_folder_shards.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"results: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--db", default=None, help="SQLAlchemy URL of an empty metadata database (default: SQLite in a temp dir)")
    ap.add_argument("--shard", action="append", default=[], metavar="NAME=URL",
                    help="near=URL and far=URL: share across two shards (wiped first)")
    ap.add_argument("--fewer", type=int, default=1000, help="across shards: the smaller folder's files")
    args = ap.parse_args()
    if args.shard:
        main_across(args)
        return
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

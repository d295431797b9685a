"""The collector's memory against the size of the store (issue 11, item 4): `cubby gc`'s
repacking pass (`PackBlockStore.compact`) over a store of many packs, beside the pack list
read whole, which is what the pass held before it walked the list in pages; and `cubby admin
check`'s pack passes (`scrub`, without reading data), which held the pack list and the
listing whole until they too were walked in pages.

The store is made as the server makes it, only faster: packs recorded in the chunk index of a
SQLite metadata database (`SqlChunkIndex.add_packs`, one chunk each, every chunk alive and every
pack full, so that nothing is to rewrite and the walk is all there is) and one object per pack in
a folder store (a few bytes each, made sparse to the recorded size: the listing is what the
passes read of them).

Rows:
- reference: the pack list read whole (`iter_usage` in one page) and the listing's names
  checked against the index all at once (`ChunkIndex.known_among`), held together;
- the pass itself;
- the check's pack passes (no held chunks given: the pack list and the listing are what is
  measured). SQLite's own page cache for the scratch file the listing goes to is outside
  Python's heap, and bounded (2 MiB by default).

The figure is the peak of Python's heap above where each started (`tracemalloc`), and its
ratio is the reference's peak over the pass's (above 1: the pass holds less); seconds are
measured in runs of their own, without tracing.

    .venv/bin/python bench/gc_memory.py                   # 100,000 packs
    .venv/bin/python bench/gc_memory.py --packs 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from machine import describe, summary_line
from report import Report, Row, fmt_bytes

from cubby.blockstore.folder import FolderObjectStore
from cubby.blockstore.index import NewPack, iter_usage
from cubby.blockstore.packfile import Location, pack_id_of, pack_object_name
from cubby.blockstore.packs import TARGET_PACK, PackBlockStore
from cubby.blockstore.scrub import scrub
from cubby.metadata.chunk_index import SqlChunkIndex
from cubby.metadata.store import open_store

RECORD_BATCH = 5000


def make_store(folder: Path, count: int) -> tuple[PackBlockStore, Callable[[], None]]:
    """A pack store of ``count`` recorded packs, each with one live chunk and an object."""
    meta = open_store(f"sqlite:///{folder / 'meta.db'}")
    objects = FolderObjectStore(folder / "blocks")
    index = SqlChunkIndex(meta.db)
    made = 0
    t0 = time.time() - 7200  # older than the orphan age: the pass looks at every one
    while made < count:
        batch = []
        for i in range(made, min(count, made + RECORD_BATCH)):
            pack = f"{int(t0) + i // 1000:010x}{i:024x}"
            name = hashlib.sha256(i.to_bytes(8, "big")).hexdigest()
            batch.append(NewPack(pack, TARGET_PACK, TARGET_PACK - 64, [(name, Location(pack, 8, TARGET_PACK - 64, TARGET_PACK))]))
            objects.put(pack_object_name(pack), b"pack")
            os.truncate(folder / "blocks" / pack_object_name(pack), TARGET_PACK)
        index.add_packs(batch)
        made += len(batch)
        print(f"  recorded {made:,} packs", end="\r", flush=True)
    print()
    return PackBlockStore(objects, index), meta.close


def peak_of(work: Callable[[], object]) -> int:
    """Peak bytes of Python's heap above where it stood when ``work`` began."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    held = work()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del held
    return peak - base


def seconds_of(work: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    work()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packs", type=int, default=100_000, help="packs in the store (default 100,000)")
    ap.add_argument("--scratch", default="/tmp/cubby-bench/gc-memory")
    ap.add_argument("--name", default="gc_memory")
    args = ap.parse_args(argv)
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    machine = describe(scratch)
    print(summary_line(machine), flush=True)
    report = Report(args.name, machine, {"packs": args.packs, "pack_bytes": TARGET_PACK})
    store, close = make_store(scratch, args.packs)
    try:

        def whole() -> object:
            usage = list(iter_usage(store.index, page=args.packs + 1))
            listed = [pack_id_of(n) for n, _ in store.objects.list("packs/")]
            return usage, listed, store.index.known_among(listed)

        def walk() -> object:
            stats = store.compact(grace=3600)
            if stats.packs_rewritten or stats.orphans_deleted:
                raise SystemExit(f"the store was not as made: {stats}")
            return stats

        def check() -> object:
            found = scrub(store, ())
            if not found.ok or found.packs != args.packs:
                raise SystemExit(f"the store was not as made: {found}")
            return found

        for name, work in (
            ("the pack list read whole (reference)", whole),
            ("compact(): the pack list walked in pages", walk),
            ("scrub() (cubby admin check): pack list in pages, listing on disk", check),
        ):
            peak = peak_of(work)
            seconds = seconds_of(work)
            ref = None if work is whole else "the pack list read whole (reference)"
            row = report.add(Row("memory", name, seconds, reference=ref, extra={"peak_heap_bytes": peak}))
            if ref is not None:
                reference = report.find("memory", ref)
                assert reference is not None
                row.ratio = reference.extra["peak_heap_bytes"] / max(1, peak)
            report.notes.append(f"{name}: peak heap {fmt_bytes(peak)} over {args.packs:,} packs, {seconds:.2f} s")
    finally:
        close()
        shutil.rmtree(scratch, ignore_errors=True)
    report.print()
    print(f"\nresults: {report.write()}")


if __name__ == "__main__":
    main()

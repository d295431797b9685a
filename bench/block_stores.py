"""The pack store beside the one-file-per-chunk store it replaced (issue 11), in one run.

Upload batches go through `SqlMetadataStore.ingest_chunks` (verify, compress, write, make
durable, record) into each store, interleaved round by round on the same machine, the same
SQLite database and the same two-thread pool the server gives its block store:

- small: batches of 1,000 chunks of 4 KiB (what 1,000 small files become);
- large: batches of 16 chunks of 1 MiB (the 16 MiB upload window of a large file).

Reference: `LocalBlockStore` (one file per chunk, the release before packs). Ratio = its time
over the pack store's (above 1 = the pack store is faster). Also counted: files or objects
created per batch.

    .venv/bin/python bench/block_stores.py
    .venv/bin/python bench/block_stores.py --rounds 5 --batches 8
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from machine import describe, summary_line
from report import Report, Row

from cubby.blockstore.local import LocalBlockStore
from cubby.blockstore.opener import open_block_store
from cubby.metadata.store import open_store

CASES = {"small": (1000, 4096), "large": (16, 1 << 20)}
LOCAL = "LocalBlockStore (file per chunk)"
PACKS = "PackBlockStore (packs on a folder)"


def batches(n: int, count: int, size: int) -> list[list[tuple[str, bytes]]]:
    out = []
    for _ in range(n):
        chunks = [os.urandom(size) for _ in range(count)]
        out.append([(hashlib.sha256(c).hexdigest(), c) for c in chunks])
    return out


def files_under(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; rows hold the median")
    ap.add_argument("--batches", type=int, default=4, help="batches per store per round")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/cubby-bench"))
    ap.add_argument("--name", default="block_stores")
    args = ap.parse_args(argv)
    machine = describe(args.scratch, {})
    print(summary_line(machine), flush=True)
    report = Report(args.name, machine, {"rounds": args.rounds, "batches": args.batches, "cases": CASES})
    work = args.scratch / "block-stores"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store = open_store(f"sqlite:///{work / 'meta.db'}")
    user, _ = store.create_user("bench")
    times: dict[tuple[str, str], list[float]] = {}
    made: dict[tuple[str, str], int] = {}
    with ThreadPoolExecutor(2) as pool:
        for rnd in range(args.rounds):
            for case, (count, size) in CASES.items():
                for kind in (LOCAL, PACKS):
                    folder = work / f"{case}-{rnd}-{'local' if kind == LOCAL else 'packs'}"
                    blocks = (
                        LocalBlockStore(folder, executor=pool)
                        if kind == LOCAL
                        else open_block_store(str(folder), store.db, executor=pool)
                    )
                    todo = batches(args.batches, count, size)
                    before = files_under(folder)
                    os.sync()
                    t0 = time.perf_counter()
                    for b in todo:
                        store.ingest_chunks(user.root_ns, b, blocks)
                    times.setdefault((case, kind), []).append(time.perf_counter() - t0)
                    made[(case, kind)] = (files_under(folder) - before) // args.batches
    store.close()
    for case, (count, size) in CASES.items():
        nbytes = args.batches * count * size
        for kind in (LOCAL, PACKS):
            secs = statistics.median(times[(case, kind)])
            report.add(
                Row(case, kind, secs, nbytes, files=args.batches * count, reference=LOCAL if kind == PACKS else None,
                    extra={"samples": times[(case, kind)], "files_per_batch": made[(case, kind)]})
            )
        report.notes.append(
            f"{case}: {count} x {size} B per batch; files created per batch: "
            f"{made[(case, LOCAL)]} (file per chunk) vs {made[(case, PACKS)]} (packs)"
        )
    path = report.write()
    report.print()
    print(f"\nresults: {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Ingest benchmark (issue 2): bytes through cubby's storage core, beside the machine's limit
and beside borg.

For each dataset (1 GiB of random bytes, 1 GiB of compressible text by default):

1. reference: read + SHA-256 + write the same bytes, durable at the end (`reference.py`);
2. cubby core: chunk with FastCDC (`cubby.core.chunking`), name each chunk by SHA-256, store
   in batches with `SqlMetadataStore.ingest_chunks` into the pack store (`PackBlockStore` on a
   folder, as `cubby serve` opens it; it verifies,
   compresses with `cubby.core.compression` where it pays, writes and syncs) and commit the
   file into the SQLite metadata store, on one thread (``--threads N`` adds a run that hashes,
   verifies and compresses chunks on a thread pool, an option of the core, and stores one batch
   while it chunks the next, as the server stores one upload window while it receives the next);
3. borg: `borg create --compression zstd` into a fresh unencrypted repository.

Each step runs ``--repeat`` times (3 by default), interleaved, and the median is reported.
Printed as MB/s and as a ratio to the reference (1.0 = as fast as read + hash + write), with
cubby's time split into its stages, and the stored size and dedup ratio of cubby and borg.

    .venv/bin/python bench/ingest.py                # 1 GiB each, as the issue asks
    .venv/bin/python bench/ingest.py --size 128M    # quicker
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))

from datasets import dataset, parse_size
from machine import describe, summary_line
from reference import drop, read_hash_write, warm
from report import Report, Row, fmt_bytes, median_run

from cubby.blockstore.opener import open_block_store
from cubby.core.chunking import chunk_file
from cubby.metadata.store import open_store
from cubby.model import ChunkRef, CommitRequest

BATCH_BYTES = 16 * 2**20
"""Chunks handed to the store per call, as the server's upload route does (INGEST_BATCH_BYTES)."""


def process_cpu() -> float:
    """CPU seconds (user + system, every thread) this process has used: a figure that a loaded
    machine changes far less than wall-clock time."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def cubby_ingest(src: Path, work: Path, threads: int, profile: bool) -> dict[str, Any]:
    """Ingest ``src`` through the core into a fresh store under ``work``; seconds per stage."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store = open_store(f"sqlite:///{work / 'meta.db'}")
    pool = ThreadPoolExecutor(threads) if threads > 1 else None
    blocks = open_block_store(str(work / "blocks"), store.db, executor=pool)  # packs, as the server
    user, _token = store.create_user("bench")
    ns = user.root_ns
    prof = cProfile.Profile() if profile else None
    stages = {"chunk_and_hash": 0.0, "store_chunks": 0.0, "commit": 0.0}
    refs: list[ChunkRef] = []
    unique: dict[str, int] = {}
    os.sync()
    t0 = time.perf_counter()
    cpu0 = process_cpu()
    if prof:
        prof.enable()
    batch: list[tuple[str, bytes]] = []
    batch_bytes = 0
    # With threads, one batch is stored while the next is chunked, as the server stores one
    # upload window while it receives the next (the client keeps IN_FLIGHT windows in flight):
    # the pack's write and fsync then overlap the hashing. "store_chunks" is the time spent
    # waiting for a store to finish, so the stages still add up to the whole.
    storer = ThreadPoolExecutor(1) if threads > 1 else None
    storing: Future[int] | None = None

    def store_batch(items: list[tuple[str, bytes]]) -> None:
        nonlocal storing
        if storing is not None:
            storing.result()
            storing = None
        if storer is None:
            store.ingest_chunks(ns, items, blocks)
        else:
            storing = storer.submit(store.ingest_chunks, ns, items, blocks)

    it = iter(chunk_file(src, executor=pool))
    mark = time.perf_counter()
    for c in it:
        now = time.perf_counter()
        stages["chunk_and_hash"] += now - mark
        refs.append(ChunkRef(c.hash, c.length))
        unique.setdefault(c.hash, c.length)
        batch.append((c.hash, c.data))
        batch_bytes += c.length
        if batch_bytes >= BATCH_BYTES:
            store_batch(batch)
            batch, batch_bytes = [], 0
        mark = time.perf_counter()
        stages["store_chunks"] += mark - now
    stages["chunk_and_hash"] += time.perf_counter() - mark
    mark = time.perf_counter()
    if batch:
        store_batch(batch)
    if storing is not None:
        storing.result()
    if storer is not None:
        storer.shutdown()
    now = time.perf_counter()
    stages["store_chunks"] += now - mark
    size = src.stat().st_size
    res = store.commit(
        user.id, ns, CommitRequest("/" + src.name, size, tuple(refs), None, src.stat().st_mtime)
    )
    stages["commit"] = time.perf_counter() - now
    if prof:
        prof.disable()
    seconds = time.perf_counter() - t0
    cpu = process_cpu() - cpu0
    if pool:
        pool.shutdown()
    if not res.committed:
        raise SystemExit(f"cubby did not commit {src}: still needs {len(res.needed)} chunks")
    store.close()
    stored = folder_bytes(work / "blocks")
    out: dict[str, Any] = {
        "seconds": seconds,
        "cpu_seconds_per_gib": round(cpu / (src.stat().st_size / 2**30), 3),
        "stages_seconds": {k: round(v, 3) for k, v in stages.items()},
        "chunks": len(refs),
        "unique_chunks": len(unique),
        "unique_bytes": sum(unique.values()),
        "stored_bytes": stored,
        "dedup_ratio": round(size / max(1, sum(unique.values())), 3),
        "stored_over_logical": round(stored / max(1, size), 4),
    }
    if prof:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
        out["profile_top_tottime"] = buf.getvalue()
    shutil.rmtree(work, ignore_errors=True)
    return out


def borg_env(work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BORG_BASE_DIR": str(work / "base"),
        "BORG_CACHE_DIR": str(work / "cache"),
        "BORG_CONFIG_DIR": str(work / "config"),
        "BORG_SECURITY_DIR": str(work / "security"),
        "BORG_KEYS_DIR": str(work / "keys"),
        "BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes",
        "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes",
    }


def borg_create(src: Path, work: Path) -> dict[str, Any]:
    """``borg create --compression zstd`` of ``src`` into a fresh repository (init not timed)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = borg_env(work)
    repo = work / "repo"
    subprocess.run(["borg", "init", "--encryption=none", str(repo)], env=env, check=True, capture_output=True)
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["borg", "create", "--json", "--compression", "zstd", f"{repo}::bench", src.name],
        env=env,
        cwd=src.parent,
        check=True,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    stats = json.loads(proc.stdout)["archive"]["stats"]
    stored = folder_bytes(repo / "data")
    shutil.rmtree(work, ignore_errors=True)
    return {
        "seconds": seconds,
        "original_size": stats.get("original_size"),
        "compressed_size": stats.get("compressed_size"),
        "deduplicated_size": stats.get("deduplicated_size"),
        "stored_bytes": stored,
        # both sizes are after compression, so their quotient is the dedup ratio alone
        "dedup_ratio": round(stats["compressed_size"] / max(1, stats["deduplicated_size"]), 3),
        "stored_over_logical": round(stored / max(1, src.stat().st_size), 4),
    }


def run_kind(report: Report, kind: str, src: Path, scratch: Path, args: argparse.Namespace) -> None:
    """``args.repeat`` rounds of reference, cubby and borg, interleaved so that a change in the
    machine's load hits all of them alike; each row holds the median round."""
    size = src.stat().st_size
    ref = "read+sha256+write"
    variants = [(1, "cubby core, 1 thread")]
    if args.threads > 1:
        variants.append((args.threads, f"cubby core, {args.threads} threads (hash, verify, compress)"))
    runs: dict[str, list[dict[str, Any]]] = {}
    for _round in range(args.repeat):
        warm(src)
        ref_out = scratch / "ref-out.bin"
        os.sync()
        cpu0 = process_cpu()
        seconds, _digest = read_hash_write(src, ref_out)
        cpu = process_cpu() - cpu0
        drop(ref_out)
        runs.setdefault(ref, []).append({"seconds": seconds, "cpu_seconds_per_gib": round(cpu / (size / 2**30), 3)})
        for threads, name in variants:
            warm(src)
            runs.setdefault(name, []).append(cubby_ingest(src, scratch / "cubby", threads, profile=False))
        if not args.no_borg:
            warm(src)
            runs.setdefault("borg", []).append(borg_create(src, scratch / "borg"))
    out = median_run(runs[ref])
    report.add(Row(kind, ref, out.pop("seconds"), size, extra=out))
    cubby_rows = []
    for _threads, name in variants:
        out = median_run(runs[name])
        row = report.add(Row(kind, name, out.pop("seconds"), size, reference=ref, extra=out))
        cubby_rows.append(row)
        stages = row.extra["stages_seconds"]
        report.notes.append(
            f"{kind}, {name}: {row.seconds:.2f}s = chunk+hash {stages['chunk_and_hash']:.2f}s, "
            f"store (verify, compress, write, sync, index) {stages['store_chunks']:.2f}s, "
            f"commit {stages['commit']:.2f}s; {row.extra['cpu_seconds_per_gib']:.2f} CPU s/GiB; {row.extra['chunks']} chunks, stored "
            f"{fmt_bytes(row.extra['stored_bytes'])} of {fmt_bytes(size)}, dedup {row.extra['dedup_ratio']}x"
        )
    if not args.no_borg:
        out = median_run(runs["borg"])
        borg = report.add(
            Row(kind, "borg create --compression zstd", out.pop("seconds"), size, reference=ref, extra=out)
        )
        report.notes.append(
            f"{kind}, borg: stored {fmt_bytes(out['stored_bytes'])} of {fmt_bytes(size)} "
            f"(deduplicated_size {fmt_bytes(out['deduplicated_size'] or 0)}, dedup {out['dedup_ratio']}x)"
        )
        for row in cubby_rows:
            row.extra["vs_borg"] = round(borg.seconds / row.seconds, 3)
            report.notes.append(
                f"{kind}, {row.name} over borg: {borg.seconds / row.seconds:.2f}x borg's throughput"
            )
    if args.profile:
        # A separate run: cProfile slows Python code, so a profiled run is never a timed one.
        warm(src)
        prof = cubby_ingest(src, scratch / "cubby", 1, profile=True)["profile_top_tottime"]
        print(f"--- profile of {kind}, cubby core, 1 thread (top by own time) ---\n{prof}")
        cubby_rows[0].extra["profile_top_tottime"] = prof.splitlines()[:40]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="bytes per dataset (1G, 256M, ...); default 1G")
    ap.add_argument("--kinds", default="random,text", help="datasets to run: random,text")
    ap.add_argument(
        "--scratch", type=Path, default=Path("/tmp/cubby-bench"), help="scratch folder (data is kept here)"
    )
    ap.add_argument("--threads", type=int, default=1, help="also run cubby hashing, verifying and compressing chunks on N threads")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per dataset; rows hold the median")
    ap.add_argument("--no-borg", action="store_true", help="skip borg")
    ap.add_argument("--profile", action="store_true", help="also cProfile one extra (untimed) cubby run")
    ap.add_argument("--name", default="ingest", help="results go to bench/results/NAME.json")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    if not args.no_borg:
        subprocess.run(["bash", str(HERE / "setup.sh")], check=True)
    machine = describe(args.scratch, {"borg": ["borg", "--version"]})
    print(summary_line(machine), flush=True)
    report = Report(
        args.name,
        machine,
        {
            "size": size,
            "kinds": args.kinds,
            "threads": args.threads,
            "repeat": args.repeat,
            "batch_bytes": BATCH_BYTES,
        },
    )
    for kind in args.kinds.split(","):
        src = dataset(args.scratch, kind, size)
        print(f"[{kind}] running ...", flush=True)
        run_kind(report, kind, src, args.scratch, args)
    path = report.write()
    report.print()
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()

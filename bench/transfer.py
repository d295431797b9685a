"""Transfer benchmark (issue 3): upload and download through a real server on loopback.

A fresh server (`cubby serve`, SQLite + local block store) in its own process;
the `cubby` command as a subprocess, as a user runs it:

- upload: ``cubby put`` of 1 GiB of random bytes, as a ratio to read + SHA-256 + write of the
  same bytes locally (what the server must at least do with them);
- download: ``cubby get`` of that file, as a ratio to a plain durable copy of it;
- each of the above ``--repeat`` times (3), a fresh server per round, interleaved with its
  reference; rows hold the median round;
- rate limits: ``--max-upload-rate`` / ``--max-download-rate`` of 50 MB/s on a fresh file
  (through `cubby.client.upload` and `cubby.client.download` with the CLI's limiter, so that the chunk traffic itself is
  timed, not the hashing pass before it): the achieved rate beside the limit.

    .venv/bin/python bench/transfer.py                  # 1 GiB, as the issue asks
    .venv/bin/python bench/transfer.py --size 256M --rate 20e6
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self

from breakdown import CallTimes, split, timed_scans
from datasets import dataset, parse_size
from live import children_cpu, cli, server_cpu, start_server
from machine import describe, summary_line
from reference import drop, plain_copy, read_hash_write, warm
from report import Report, Row, median_run

from cubby.client.api import ApiClient
from cubby.client.download import download_file
from cubby.client.ratelimit import TokenBucket
from cubby.client.upload import upload_file


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class TimedApi(ApiClient):
    """An ApiClient that notes when chunk traffic starts and ends, and how many bytes moved."""

    def __enter__(self) -> Self:
        return self

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.first: float | None = None
        self.last = 0.0
        self.chunk_bytes = 0

    def upload_chunks(self, ns_id: int, items: Sequence[tuple[str, bytes]]) -> int:
        start = time.perf_counter()
        self.first = start if self.first is None else self.first
        n = super().upload_chunks(ns_id, items)
        self.last = time.perf_counter()
        self.chunk_bytes += sum(len(d) for _, d in items)
        return n

    def fetch_chunks(self, hashes: Sequence[str]) -> Iterator[tuple[str, bytes]]:
        start = time.perf_counter()
        self.first = start if self.first is None else self.first
        for name, data in super().fetch_chunks(hashes):
            self.chunk_bytes += len(data)
            yield name, data
        self.last = time.perf_counter()

    @property
    def rate(self) -> float:
        span = self.last - (self.first or self.last)
        return self.chunk_bytes / span if span > 0 else 0.0


def cpu_per_gib(before: tuple[float, float], server: Any, size: int) -> dict[str, float]:
    """CPU seconds per GiB of the `cubby` command and of the server since ``before`` (their
    CPU then): figures that survive a loaded machine better than wall-clock time."""
    gib = size / 2**30
    return {
        "client_cpu_s_per_gib": round((children_cpu() - before[0]) / gib, 3),
        "server_cpu_s_per_gib": round((server_cpu(server) - before[1]) / gib, 3),
    }


def upload_breakdown(report: Report, src: Path, folder: Path, size: int) -> None:
    """The upload again, in this process, into a fresh server (the first one holds every chunk
    now): where its time goes, per API call and on the client."""
    server, token = start_server(folder)
    try:
        warm(src)
        with timed_scans() as scans, CallTimes(server.url, token) as api:
            t0 = time.perf_counter()
            upload_file(api, src, "/big.bin")
            seconds = time.perf_counter() - t0
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    extra, line = split(seconds, api, scans)
    report.add(
        Row(
            "upload",
            "cubby upload_file in-process (breakdown)",
            seconds,
            size,
            reference="read+sha256+write",
            extra=extra,
        )
    )
    report.notes.append(f"upload, in-process {seconds:.2f}s: {line}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="bytes to upload and download (default 1G)")
    ap.add_argument("--rate", type=float, default=50e6, help="bytes/s for the rate-limit runs (default 50e6)")
    ap.add_argument("--rate-size", default="512M", help="bytes moved under the rate limit (default 512M)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/cubby-bench"))
    ap.add_argument(
        "--no-breakdown", action="store_true", help="skip the in-process upload that shows where time goes"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="rounds of upload and download; rows hold the median"
    )
    ap.add_argument("--name", default="transfer")
    args = ap.parse_args(argv)
    size, rate_size = parse_size(args.size), parse_size(args.rate_size)
    machine = describe(args.scratch)
    print(summary_line(machine), flush=True)
    report = Report(
        args.name,
        machine,
        {"size": size, "rate_limit_bytes_per_s": args.rate, "rate_size": rate_size, "repeat": args.repeat},
    )
    src = dataset(args.scratch, "random", size, seed=1)
    slow_src = dataset(args.scratch, "random", rate_size, seed=2)
    work = args.scratch / "transfer"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    servers = []
    try:
        # upload and download, ``--repeat`` rounds, each into a fresh server -------------------
        runs: dict[str, list[dict[str, Any]]] = {}
        for k in range(args.repeat):
            server, token = start_server(work / f"round-{k}")
            servers.append(server)
            warm(src)
            ref_seconds, digest = read_hash_write(src, work / "ref.bin")
            drop(work / "ref.bin")
            runs.setdefault("ref_up", []).append({"seconds": ref_seconds})
            warm(src)
            cpu = (children_cpu(), server_cpu(server))
            seconds, out = cli(server, token, "put", str(src), "/big.bin")
            runs.setdefault("put", []).append(
                {
                    "seconds": seconds,
                    **cpu_per_gib(cpu, server, size),
                    **{f: out[0][f] for f in ("bytes_sent", "chunks_sent", "chunks")},
                }
            )
            warm(src)
            runs.setdefault("ref_down", []).append({"seconds": plain_copy(src, work / "copy.bin")})
            drop(work / "copy.bin")
            target = work / "got.bin"
            cpu = (children_cpu(), server_cpu(server))
            seconds, out = cli(server, token, "get", "/big.bin", str(target))
            cpu_used = cpu_per_gib(cpu, server, size)
            same = sha256_file(target) == digest
            drop(target)
            if not same:
                raise SystemExit("the downloaded file differs from the uploaded one")
            runs.setdefault("get", []).append(
                {"seconds": seconds, **cpu_used, "bytes_received": out[0]["bytes_received"], "identical": same}
            )
            if k < args.repeat - 1:
                server.stop()
        for group, ref_key, ref_name, key, name in (
            ("upload", "ref_up", "read+sha256+write", "put", "cubby put"),
            ("download", "ref_down", "plain copy (read+write)", "get", "cubby get"),
        ):
            med = median_run(runs[ref_key])
            report.add(Row(group, ref_name, med.pop("seconds"), size, extra=med))
            med = median_run(runs[key])
            report.add(Row(group, name, med.pop("seconds"), size, reference=ref_name, extra=med))
        # rate limits -------------------------------------------------------------------------
        warm(slow_src)
        limit = TokenBucket(args.rate)
        with TimedApi(server.url, token, upload_limit=limit) as api:
            t0 = time.perf_counter()
            res = upload_file(api, slow_src, "/slow.bin")
            seconds = time.perf_counter() - t0
        report.add(
            Row(
                "rate limit",
                f"upload, limit {args.rate / 1e6:.0f} MB/s",
                seconds,
                res.bytes_sent,
                ratio=api.rate / args.rate,
                extra={
                    "limit_bytes_per_s": args.rate,
                    "achieved_bytes_per_s": round(api.rate),
                    "chunk_traffic_seconds": round(api.last - (api.first or 0), 3),
                },
            )
        )
        with TimedApi(server.url, token, download_limit=TokenBucket(args.rate)) as api:
            t0 = time.perf_counter()
            download_file(api, "/slow.bin", work / "slow.bin")
            seconds = time.perf_counter() - t0
        drop(work / "slow.bin")
        report.add(
            Row(
                "rate limit",
                f"download, limit {args.rate / 1e6:.0f} MB/s",
                seconds,
                api.chunk_bytes,
                ratio=api.rate / args.rate,
                extra={
                    "limit_bytes_per_s": args.rate,
                    "achieved_bytes_per_s": round(api.rate),
                    "chunk_traffic_seconds": round(api.last - (api.first or 0), 3),
                },
            )
        )
        if not args.no_breakdown:
            upload_breakdown(report, src, work / "breakdown", size)
        report.notes.append(
            "rate-limit rows: ratio = achieved rate of the chunk traffic / the limit (1.00 = exact)"
        )
        for r in report.rows:
            if r.name in ("cubby put", "cubby get"):
                report.notes.append(
                    f"{r.group}: cubby at {r.ratio:.2f}x the reference ({r.mb_per_s:.0f} MB/s)"
                )
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report.finish()


if __name__ == "__main__":
    main(sys.argv[1:])

"""S3 backend benchmark (issue 11): cubby's packs in a bucket on a real S3 server process (moto's
server, on loopback), against boto3 moving the same bytes to the same server in the same run.

- small files: ``cubby put`` of a folder of 10,000 files of 4 KiB into a server whose packs live
  on S3, through a counting HTTP proxy (`tests/helpers/fault_proxy.py` with no faults): how many
  objects it wrote (PUTs) and how many S3 requests it made per file, beside the one object per
  chunk that a store without packs would write (10,000);
- large file: ``cubby put`` and ``cubby get`` of one random file (1 GiB by default) with the
  server's ``--blocks s3://…`` pointing straight at the server (and, to tell the S3 backend's
  share from the rest of cubby's, the same with the packs in a local folder), as a ratio to
  boto3's own ``upload_file`` / ``download_file`` (s3transfer: 8 MiB multipart parts on 10
  threads, boto3's defaults) of the same bytes to the same server. ``cubby get`` runs twice per
  round: through the server (the default, ``downloads=proxied``) and read straight from the
  bucket (the server restarted with ``downloads=direct``), in alternating order. Rows hold the
  median of ``--repeat`` rounds, each reference interleaved with its cubby run.

    .venv/bin/python bench/s3_transfer.py                       # 1 GiB, 10,000 files
    .venv/bin/python bench/s3_transfer.py --size 256M --files 2000 --repeat 1
    # against another S3 server (Ceph RGW: source the s3.env of ceph-up.sh for its credentials)
    .venv/bin/python bench/s3_transfer.py --endpoint http://127.0.0.1:18580 --name s3_transfer_ceph \
        --reclaim "radosgw-admin -c /tmp/cubby-ceph/ceph.conf gc process --include-all"

CPU seconds beside each large-file row: ``cpu_client`` (the `cubby` command, or this process
for boto3), ``cpu_server`` (the cubby server) and, with ``--s3-pids GLOB`` (PID files of the S3
server's processes: ``/tmp/cubby-ceph/pids/*.pid`` for Ceph's monitor, manager, OSD and RGW),
``cpu_s3``: on a loaded machine wall-clock varies from run to run, the work done much less.

``--reclaim CMD`` runs a shell command after each deletion of a step's objects: Ceph RGW frees
a deleted object's space only when its garbage collector runs (hourly by default), so without
it the three 1 GiB uploads of a round (boto3, boto3 on 16 MiB objects, cubby) fill the 4 GiB
OSD of ``ceph-up.sh``.
"""

from __future__ import annotations

import argparse
import glob
import os
import resource
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from datasets import dataset, parse_size, small_files
from live import LiveServer, children_cpu, cli, server_cpu, start_server
from machine import describe, summary_line
from reference import drop, warm
from report import Report, Row, median_run
from transfer import sha256_file

from tests.helpers.fault_proxy import Faults, fault_proxy
from tests.helpers.moto_server import MOTO_CREDENTIALS, moto_server

BUCKET = "cubby-bench"


CHECKSUM: list[str] = []
"""The ``--checksum`` of the server's S3 URL (empty: the store's default)."""


def s3_server(folder: Path, endpoint: str, prefix: str, options: str = "") -> tuple[LiveServer, str]:
    """A fresh cubby server whose packs live under ``prefix`` of the bench bucket (credentials
    from the environment, as every AWS client reads them); ``options``: more of the URL's query."""
    check = f"&checksum={CHECKSUM[0]}" if CHECKSUM else ""
    return start_server(folder, blocks=f"s3://{BUCKET}/{prefix}?endpoint={endpoint}&region=us-east-1{check}{options}")


def small_files_row(report: Report, scratch: Path, work: Path, endpoint: str, count: int, size: int) -> None:
    folder = small_files(scratch, count, size)
    with fault_proxy(endpoint, Faults()) as proxy:
        server, token = s3_server(work / "small", proxy.endpoint, "small")
        # The server's start tries its store (`cubby.blockstore.startcheck`: the body-check
        # probe, an object written, read back and deleted): counted apart from the put's.
        at_start = Counter(proxy.requests)
        try:
            seconds, out = cli(server, token, "put", str(folder), "/small")
        finally:
            server.stop()
    uploaded = sum(1 for line in out if line.get("path"))
    if uploaded < count:  # the folder holds a marker file as well
        raise SystemExit(f"cubby put reported {uploaded} files of {count}")
    made = proxy.requests - at_start
    puts, total = made["PUT"], sum(made.values())
    report.add(
        Row(
            "small files",
            "one object per chunk (a store without packs)",
            0.0,
            files=count,
            extra={"objects": count},
        )
    )
    report.add(
        Row(
            "small files",
            f"cubby put {count} x {size} B, packs on S3 (through a counting proxy)",
            seconds,
            count * size,
            files=count,
            reference="one object per chunk (a store without packs)",
            ratio=puts / count,
            extra={
                "objects_written": puts,
                "s3_requests": dict(made),
                "s3_requests_at_start": dict(at_start),
                "requests_per_file": round(total / count, 4),
            },
        )
    )
    report.notes.append(
        f"small files: {puts} objects written for {count} files ({puts / count:.4f} per file; "
        f"without packs: {count}), {total} S3 requests ({total / count:.4f} per file); the server's start, "
        f"before: {sum(at_start.values())} requests (its store check)"
    )


S3_PIDS: list[str] = []
"""The ``--s3-pids`` glob (empty: none): PID files of the S3 server's processes."""


def s3_cpu() -> float:
    """CPU seconds the S3 server's processes (``--s3-pids``) have used so far."""
    total = 0.0
    for pattern in S3_PIDS:
        for pid_file in glob.glob(pattern):
            try:
                stat = Path(f"/proc/{Path(pid_file).read_text().strip()}/stat").read_text()
            except (OSError, ValueError):
                continue
            fields = stat.rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def own_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return use.ru_utime + use.ru_stime


class CpuMeter:
    """CPU seconds of one step: the client (this process's children, or this process), the
    cubby server (when given) and the S3 server (``--s3-pids``)."""

    def __init__(self, server: LiveServer | None = None, *, client_in_process: bool = False) -> None:
        self.server = server
        self.client = own_cpu if client_in_process else children_cpu
        self.start = (self.client(), server_cpu(server) if server else 0.0, s3_cpu())

    def read(self) -> dict[str, float]:
        client, server, s3 = self.client(), server_cpu(self.server) if self.server else 0.0, s3_cpu()
        out = {"cpu_client": round(client - self.start[0], 2)}
        if self.server is not None:
            out["cpu_server"] = round(server - self.start[1], 2)
        if S3_PIDS:
            out["cpu_s3"] = round(s3 - self.start[2], 2)
        return out


def cubby_round(
    server: LiveServer, token: str, src: Path, digest: str, target: Path, *, direct: str | None = None, first: bool = False
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """``cubby put`` then ``cubby get`` of ``src``: a run of each (seconds, CPU seconds; the
    chunk count with the put); with ``direct`` (the server's ``--blocks`` with
    ``downloads=direct``), one more ``cubby get`` from the same server restarted on it, before
    the other get when ``first`` (rounds alternate the order)."""
    try:
        warm(src)
        meter = CpuMeter(server)
        put_seconds, out = cli(server, token, "put", str(src), "/big.bin")
        put = {"seconds": put_seconds, "chunks": int(out[0]["chunks"]), **meter.read()}
        proxied = list(server.extra_args)

        def get(blocks: list[str]) -> dict[str, Any]:
            if server.extra_args != blocks:
                server.extra_args = blocks
                server.restart()
            meter = CpuMeter(server)
            seconds, _ = cli(server, token, "get", "/big.bin", str(target))
            run = {"seconds": seconds, **meter.read()}
            same = sha256_file(target) == digest
            drop(target)
            if not same:
                raise SystemExit("the downloaded file differs from the uploaded one")
            return run

        straight = ["--blocks", direct] if direct else None
        early = get(straight) if straight and first else None
        plain = get(proxied)
        late = get(straight) if straight and not first else None
        return put, plain, early or late
    finally:
        server.stop()


def objects_reference(
    client: Any, src: Path, target: Path, part: int = 16 << 20
) -> tuple[dict[str, Any], dict[str, Any]]:
    """boto3 moving ``src`` as the pack store lays it out: objects of 16 MiB, PutObject and
    GetObject on 8 threads. Seconds up and down. (moto serves a ranged read of a big multipart
    object slowly, which makes `download_file` a weak reference on it.)"""
    from concurrent.futures import ThreadPoolExecutor

    offsets = range(0, src.stat().st_size, part)

    def put(offset: int) -> None:
        with open(src, "rb") as fh:
            fh.seek(offset)
            client.put_object(Bucket=BUCKET, Key=f"ref-objects/{offset}", Body=fh.read(part))

    def get(offset: int) -> None:
        data = client.get_object(Bucket=BUCKET, Key=f"ref-objects/{offset}")["Body"].read()
        with open(target, "r+b") as fh:
            fh.seek(offset)
            fh.write(data)

    warm(src)
    with ThreadPoolExecutor(8) as pool:
        meter, t0 = CpuMeter(client_in_process=True), time.perf_counter()
        list(pool.map(put, offsets))
        up = {"seconds": time.perf_counter() - t0, **meter.read()}
        target.write_bytes(b"")
        os.truncate(target, src.stat().st_size)
        meter, t0 = CpuMeter(client_in_process=True), time.perf_counter()
        list(pool.map(get, offsets))
        with open(target, "rb+") as fh:
            os.fsync(fh.fileno())
        down = {"seconds": time.perf_counter() - t0, **meter.read()}
    drop(target)
    empty_bucket(client, "ref-objects/", delete=False)
    return up, down


def direct_put(folder: Path, endpoint: str, prefix: str, src: Path) -> dict[str, Any]:
    """``cubby put`` of ``src`` to a server with ``uploads=direct``: the client puts its packs in
    the bucket itself (where the S3 server checks every chunk's signature; else, on moto, the
    server hands out no PUTs and this is the ordinary put)."""
    server, token = s3_server(folder, endpoint, prefix, "&uploads=direct")
    try:
        warm(src)
        meter = CpuMeter(server)
        seconds, out = cli(server, token, "put", str(src), "/big.bin")
        direct = server.logs().count('"path":"/api/v1/blocks/put_done"')
        return {"seconds": seconds, "chunks": int(out[0]["chunks"]), "packs_put_by_client": direct, **meter.read()}
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


def large_file_rows(report: Report, work: Path, endpoint: str, src: Path, size: int, repeat: int) -> None:
    """boto3, cubby on S3 and cubby on a local folder, interleaved, ``repeat`` rounds."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    digest = sha256_file(src)
    runs: dict[str, list[dict[str, Any]]] = {}
    for k in range(repeat):
        warm(src)
        meter, t0 = CpuMeter(client_in_process=True), time.perf_counter()
        client.upload_file(str(src), BUCKET, "ref/big.bin")
        runs.setdefault("ref_up", []).append({"seconds": time.perf_counter() - t0, **meter.read()})
        target = work / "ref-got.bin"
        meter, t0 = CpuMeter(client_in_process=True), time.perf_counter()
        client.download_file(BUCKET, "ref/big.bin", str(target))
        runs.setdefault("ref_down", []).append({"seconds": time.perf_counter() - t0, **meter.read()})
        drop(target)
        client.delete_object(Bucket=BUCKET, Key="ref/big.bin")  # moto holds objects in memory
        reclaim()
        up, down = objects_reference(client, src, work / "ref-objects.bin")
        runs.setdefault("obj_up", []).append(up)
        runs.setdefault("obj_down", []).append(down)
        server, token = s3_server(work / f"round-{k}", endpoint, f"round-{k}")
        direct = server.extra_args[-1] + "&downloads=direct"
        put, get, straight = cubby_round(server, token, src, digest, work / "got.bin", direct=direct, first=k % 2 == 1)
        runs.setdefault("put", []).append(put)
        runs.setdefault("get", []).append(get)
        runs.setdefault("direct_get", []).append(straight or {})
        empty_bucket(client, f"round-{k}/", delete=False)
        reclaim()
        runs.setdefault("direct_put", []).append(direct_put(work / f"direct-{k}", endpoint, f"direct-{k}", src))
        empty_bucket(client, f"direct-{k}/", delete=False)
        reclaim()
        server, token = start_server(work / f"folder-{k}")
        put, get, _ = cubby_round(server, token, src, digest, work / "got.bin")
        runs.setdefault("folder_put", []).append(put)
        runs.setdefault("folder_get", []).append(get)
        shutil.rmtree(work / f"folder-{k}", ignore_errors=True)
    objects = "boto3 put_object/get_object, 16 MiB objects on 8 threads"
    for group, refs, rows in (
        (
            "upload",
            [("ref_up", "boto3 upload_file (same bytes, same server)"), ("obj_up", objects)],
            [
                ("put", "cubby put, packs on S3"),
                ("direct_put", "cubby put, packs on S3, put in the bucket by the client (uploads=direct)"),
                ("folder_put", "cubby put, packs in a local folder"),
            ],
        ),
        (
            "download",
            [("ref_down", "boto3 download_file (same bytes, same server)"), ("obj_down", objects)],
            [
                ("get", "cubby get, packs on S3"),
                ("direct_get", "cubby get, packs on S3, read straight from the bucket (downloads=direct)"),
                ("folder_get", "cubby get, packs in a local folder"),
            ],
        ),
    ):
        for ref_key, ref_name in refs:
            med = median_run(runs[ref_key])
            report.add(Row(group, ref_name, med.pop("seconds"), size, extra=med))
            report.notes.append(f"{group}: {ref_name}: {cpu_note(med)}")
        for key, name in rows:
            med = median_run(runs[key])
            row = report.add(Row(group, name, med.pop("seconds"), size, reference=refs[0][1], extra=med))
            second = report.find(group, refs[1][1])
            if second is not None and row.seconds > 0:
                row.extra[f"ratio_to_{refs[1][0]}"] = round(second.seconds / row.seconds, 3)
            report.notes.append(
                f"{group}: {name} at {row.ratio or 0:.2f}x boto3's {group.removesuffix('load')}load_file"
                f" and {row.extra.get(f'ratio_to_{refs[1][0]}', 0):.2f}x boto3 on 16 MiB objects"
                f" ({row.mb_per_s or 0:.0f} MB/s); {cpu_note(row.extra)}"
            )


RECLAIM: list[str] = []
"""The ``--reclaim`` command (empty: none), run after each deletion (see the module docstring)."""


def reclaim() -> None:
    if RECLAIM:
        subprocess.run(RECLAIM, check=True, stdout=subprocess.DEVNULL, timeout=600)


def cpu_note(run: dict[str, Any]) -> str:
    parts = [f"{key.removeprefix('cpu_')} {run[key]:.1f}" for key in ("cpu_client", "cpu_server", "cpu_s3") if key in run]
    return "CPU s: " + ", ".join(parts)


def empty_bucket(client: Any, prefix: str = "", *, delete: bool = True) -> None:
    """Delete the bench's objects under ``prefix`` (and the bucket): a real server outlives us."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", ()):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    if delete:
        client.delete_bucket(Bucket=BUCKET)
    reclaim()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="bytes of the large file (default 1G)")
    ap.add_argument("--files", type=int, default=10_000, help="number of small files (default 10000)")
    ap.add_argument("--file-size", type=int, default=4096, help="bytes per small file (default 4096)")
    ap.add_argument(
        "--repeat", type=int, default=3, help="rounds of the large-file runs; rows hold the median"
    )
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/cubby-bench"))
    ap.add_argument("--endpoint", default=None, help="an S3 server already running (default: start moto's)")
    ap.add_argument("--name", default="s3_transfer")
    ap.add_argument("--s3-pids", default="", help="glob of the S3 server's PID files, for its CPU seconds")
    ap.add_argument("--reclaim", default="", help="shell command run after each deletion (Ceph: gc process)")
    ap.add_argument(
        "--checksum", default="", help="the PUT body check of cubby's S3 store: auto (its default: crc32 where the server checks it, else sha256-chunked where it checks those, else sha256), crc32, md5, sha256 or sha256-chunked"
    )
    args = ap.parse_args(argv)
    CHECKSUM[:] = [args.checksum] if args.checksum else []
    RECLAIM[:] = shlex.split(args.reclaim)
    S3_PIDS[:] = [args.s3_pids] if args.s3_pids else []
    size = parse_size(args.size)
    machine = describe(args.scratch)
    print(summary_line(machine), flush=True)
    report = Report(
        args.name,
        machine,
        {
            "size": size,
            "files": args.files,
            "file_size": args.file_size,
            "repeat": args.repeat,
            "s3": args.endpoint or "moto server",
            "reclaim": args.reclaim,
            "checksum": args.checksum or "default",
        },
    )
    src = dataset(args.scratch, "random", size, seed=1)
    work = args.scratch / "s3_transfer"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        with ExitStack() as stack:
            endpoint = args.endpoint
            if endpoint is None:
                os.environ.update(MOTO_CREDENTIALS)
                endpoint = stack.enter_context(moto_server())
            import boto3

            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            client.create_bucket(Bucket=BUCKET)
            stack.callback(empty_bucket, client)
            small_files_row(report, args.scratch, work, endpoint, args.files, args.file_size)
            large_file_rows(report, work, endpoint, src, size, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report.finish()


if __name__ == "__main__":
    main(sys.argv[1:])

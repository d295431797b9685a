"""cubby beside rsync (issue 3), both to a server on loopback, in one run:

(a) edit: a 256 MiB file is uploaded, one byte is inserted in its middle, and it is uploaded
    again. Bytes sent by cubby for the second upload (``bytes_sent`` of chunk data from
    ``cubby put --json``, and everything on the wire counted by a proxy in front of the
    server) beside rsync's "Total bytes sent" to an rsync daemon for the same edit.
(b) small files: 10,000 files of 4 KiB put as a folder: files per second of ``cubby put``
    beside ``rsync -a`` to the daemon (rsync does not fsync by default; a row with
    ``--fsync`` shows what durability costs it, since cubby's put is durable when it returns).
    Median of ``--repeat`` rounds (3), each into a fresh server and rsync folder.

The rsync daemon runs from its own config in the scratch folder, on a free loopback port,
and is stopped at the end. ``rsync -a`` creates a file per file: on ext4, within minutes of
removing many files near ``--scratch`` (an earlier run's leftovers, a test suite's temporary
trees), each creation walks the inode table (``recently_deleted``) and the reference takes
several times as long (bench/README.md, seventeenth session): a steady reference needs a
quiet file system. rsync is installed by `bench/setup.sh` if missing.

    .venv/bin/python bench/rsync_compare.py
    .venv/bin/python bench/rsync_compare.py --edit-size 64M --files 2000 --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from breakdown import CallTimes, split, timed_scans
from datasets import dataset, insert_byte, parse_size, small_files
from live import cli, start_server
from machine import describe, summary_line
from reference import warm
from report import Report, Row, fmt_bytes
from wire import CountingProxy

from cubby.client import upload

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    """A port for the rsync daemon, which cannot inherit a socket (a benchmark, so the small
    race with another process taking it first costs at most a rerun)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RsyncDaemon:
    """``rsync --daemon`` on 127.0.0.1 with one writable module, ``bench``, in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dest = folder / "dest"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RsyncDaemon:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.dest.mkdir(parents=True)
        conf = self.folder / "rsyncd.conf"
        conf.write_text(
            f"pid file = {self.folder / 'rsyncd.pid'}\n"
            f"log file = {self.folder / 'rsyncd.log'}\n"
            "use chroot = no\n"
            f"uid = {os.getuid()}\n"
            f"gid = {os.getgid()}\n"
            "[bench]\n"
            f"  path = {self.dest}\n"
            "  read only = false\n"
        )
        self.proc = subprocess.Popen(
            [
                "rsync",
                "--daemon",
                "--no-detach",
                f"--config={conf}",
                f"--port={self.port}",
                "--address=127.0.0.1",
            ]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"rsync daemon exited: {(self.folder / 'rsyncd.log').read_text()[-2000:]}")
            try:
                import socket

                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise SystemExit("rsync daemon did not start")

    def url(self, path: str) -> str:
        return f"rsync://127.0.0.1:{self.port}/bench/{path}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None
        shutil.rmtree(self.folder, ignore_errors=True)


def rsync(*args: str) -> tuple[float, dict[str, int]]:
    """Run rsync with ``--stats``; seconds and the byte counts it reports."""
    t0 = time.perf_counter()
    proc = subprocess.run(["rsync", "--stats", *args], check=False, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"rsync {' '.join(args)} failed: {proc.stderr[-2000:]}")
    stats: dict[str, int] = {}
    for key, label in (
        ("bytes_sent", "Total bytes sent"),
        ("bytes_received", "Total bytes received"),
        ("literal_data", "Literal data"),
        ("matched_data", "Matched data"),
        ("files_transferred", "Number of regular files transferred"),
    ):
        m = re.search(rf"{label}: ([\d,.]+)", proc.stdout)
        if m:
            stats[key] = int(m.group(1).replace(",", "").replace(".", ""))
    return seconds, stats


def edit_case(report: Report, scratch: Path, size: int, server: Any, token: str, daemon: RsyncDaemon) -> None:
    group = "one-byte insert"
    original = dataset(scratch, "random", size, seed=3)
    edited = insert_byte(original, scratch / "edited.bin", size // 2)
    warm(original)
    warm(edited)
    with CountingProxy(server.port) as proxy:
        _, out1 = cli(server, token, "put", str(original), "/edit.bin", url=proxy.url)
        first_wire = proxy.sent
        proxy.reset()
        seconds, out2 = cli(server, token, "put", str(edited), "/edit.bin", url=proxy.url)
        wire_sent, wire_received = proxy.sent, proxy.received
    r1, s1 = rsync("--no-whole-file", str(original), daemon.url("edit.bin"))
    r2, s2 = rsync("--no-whole-file", str(edited), daemon.url("edit.bin"))
    cubby_sent = out2[0]["bytes_sent"]
    rs_sent = s2["bytes_sent"]
    report.add(
        Row(
            group,
            "rsync (delta) to daemon",
            r2,
            extra={
                "bytes_sent": rs_sent,
                "bytes_received": s2.get("bytes_received"),
                "literal_data": s2.get("literal_data"),
                "first_upload_bytes_sent": s1["bytes_sent"],
                "first_upload_seconds": round(r1, 3),
            },
        )
    )
    report.add(
        Row(
            group,
            "cubby put (chunk data)",
            seconds,
            ratio=cubby_sent / max(1, rs_sent),
            reference="rsync (delta) to daemon",
            extra={
                "bytes_sent": cubby_sent,
                "chunks_sent": out2[0]["chunks_sent"],
                "chunks": out2[0]["chunks"],
                "first_upload_bytes_sent": out1[0]["bytes_sent"],
            },
        )
    )
    report.add(
        Row(
            group,
            "cubby put (all wire bytes)",
            seconds,
            ratio=wire_sent / max(1, rs_sent),
            reference="rsync (delta) to daemon",
            extra={
                "bytes_sent": wire_sent,
                "bytes_received": wire_received,
                "first_upload_wire_bytes_sent": first_wire,
            },
        )
    )
    report.notes.append(
        f"{group} in {fmt_bytes(size)}: cubby sent {fmt_bytes(cubby_sent)} of chunk data "
        f"({out2[0]['chunks_sent']}/{out2[0]['chunks']} chunks), {fmt_bytes(wire_sent)} on the wire in all; "
        f"rsync sent {fmt_bytes(rs_sent)} ({fmt_bytes(s2.get('literal_data', 0))} literal); ratio = cubby bytes / rsync bytes"
    )
    edited.unlink(missing_ok=True)


def _put_in_process(
    work: Path, folder: Path, prof: cProfile.Profile | None
) -> tuple[float, int, CallTimes, list[float]]:
    """Put ``folder`` from this process into a fresh server under ``work``."""
    shutil.rmtree(work, ignore_errors=True)
    server, token = start_server(work)
    try:
        with timed_scans() as scan_spans, CallTimes(server.url, token) as api:
            warm(folder)
            t0 = time.perf_counter()
            if prof:
                prof.enable()
            results = upload.upload_tree(api, folder, "/small")
            if prof:
                prof.disable()
            seconds = time.perf_counter() - t0
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return seconds, len(results), api, scan_spans


def profile_small_files(report: Report, scratch: Path, folder: Path, profile: bool) -> None:
    """Put the folder again, in this process, against a fresh server: time per API call, to
    show where a put of many files goes; with ``profile``, once more under cProfile (which
    slows Python code, so its run is not the one timed)."""
    seconds, files, api, scan_spans = _put_in_process(scratch / "rsync-compare-profile", folder, None)
    extra, line = split(seconds, api, scan_spans)
    report.add(
        Row(
            "small files",
            "cubby upload_tree in-process (breakdown)",
            seconds,
            files=files,
            reference="rsync -a to daemon",
            extra=extra,
        )
    )
    report.notes.append(f"small files, in-process put {seconds:.2f}s: {line}")
    if profile:
        prof = cProfile.Profile()
        _put_in_process(scratch / "rsync-compare-profile", folder, prof)
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        print("--- client profile, small files (main thread, top by own time) ---\n" + buf.getvalue())


def small_case(
    report: Report, scratch: Path, count: int, size: int, daemon: RsyncDaemon, repeat: int, profile: bool,
    workers: int = 1,
) -> None:
    """``repeat`` rounds of rsync, rsync --fsync and cubby put, each round into fresh
    destinations (a new rsync folder, a new cubby server: a second put into the same server
    would find every chunk there already). Rows hold the median; every sample is kept.
    ``workers``: the server's ``--workers`` (the default, 1, is the one-command server)."""
    group = "small files"
    folder = small_files(scratch, count, size)
    (folder / ".complete").unlink()  # not part of the data
    samples: dict[str, list[float]] = {"rsync": [], "rsync_fsync": [], "cubby": []}
    # Servers are removed at the end, not between rounds, so that no timed step pays for
    # the file system's work of deleting the previous round's 10,000 chunk files.
    leftovers: list[Path] = []
    try:
        for k in range(repeat):
            warm(folder)
            samples["rsync"].append(rsync("-a", str(folder) + "/", daemon.url(f"small-{k}/"))[0])
            warm(folder)
            samples["rsync_fsync"].append(
                rsync("-a", "--fsync", str(folder) + "/", daemon.url(f"small-fsync-{k}/"))[0]
            )
            work = scratch / f"rsync-compare-small-{k}"
            shutil.rmtree(work, ignore_errors=True)
            server, token = start_server(work, workers=workers)
            leftovers.append(work)
            try:
                warm(folder)
                seconds, out = cli(server, token, "put", str(folder), "/small")
            finally:
                server.stop()
            if len(out) != count or any(o.get("skipped") for o in out):
                raise SystemExit(f"cubby put reported {len(out)} files, expected {count} new ones")
            samples["cubby"].append(seconds)
        rs = report.add(
            Row(
                group,
                "rsync -a to daemon",
                statistics.median(samples["rsync"]),
                count * size,
                files=count,
                extra={"samples_seconds": [round(x, 3) for x in samples["rsync"]]},
            )
        )
        report.add(
            Row(
                group,
                "rsync -a --fsync to daemon",
                statistics.median(samples["rsync_fsync"]),
                count * size,
                files=count,
                reference=rs.name,
                extra={"samples_seconds": [round(x, 3) for x in samples["rsync_fsync"]]},
            )
        )
        row = report.add(
            Row(
                group,
                "cubby put (CLI)" if workers == 1 else f"cubby put (CLI), serve --workers {workers}",
                statistics.median(samples["cubby"]),
                count * size,
                files=count,
                reference=rs.name,
                extra={"samples_seconds": [round(x, 3) for x in samples["cubby"]]},
            )
        )
        report.notes.append(
            f"{group}: {count} x {fmt_bytes(size)}, median of {repeat}: cubby {row.files_per_s:.0f} files/s, "
            f"rsync {rs.files_per_s:.0f} files/s; ratio = cubby files/s / rsync files/s = {row.ratio:.2f}"
        )
        profile_small_files(report, scratch, folder, profile)
    finally:
        (folder / ".complete").write_text("")
        for work in leftovers:
            shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edit-size", default="256M", help="size of the file edited by one byte (default 256M)")
    ap.add_argument("--files", type=int, default=10_000, help="number of small files (default 10000)")
    ap.add_argument("--file-size", default="4K", help="size of each small file (default 4K)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/cubby-bench"))
    ap.add_argument(
        "--repeat", type=int, default=3, help="rounds of the small-files case; the median is reported"
    )
    ap.add_argument(
        "--profile", action="store_true", help="also cProfile the client of an in-process small-files put"
    )
    ap.add_argument("--workers", type=int, default=1, help="the small-files server's --workers (default 1)")
    ap.add_argument("--name", default="rsync_compare")
    args = ap.parse_args(argv)
    subprocess.run(["bash", str(HERE / "setup.sh")], check=True)
    edit_size, file_size = parse_size(args.edit_size), parse_size(args.file_size)
    machine = describe(args.scratch, {"rsync": ["rsync", "--version"]})
    print(summary_line(machine), flush=True)
    report = Report(args.name, machine, {"edit_size": edit_size, "files": args.files, "file_size": file_size, "workers": args.workers})
    work = args.scratch / "rsync-compare"
    shutil.rmtree(work, ignore_errors=True)
    server, token = start_server(work)
    daemon = RsyncDaemon(args.scratch / "rsyncd").start()
    try:
        edit_case(report, args.scratch, edit_size, server, token, daemon)
        small_case(report, args.scratch, args.files, file_size, daemon, args.repeat, args.profile, args.workers)
    finally:
        daemon.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report.finish()


if __name__ == "__main__":
    main(sys.argv[1:])

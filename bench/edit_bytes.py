"""Bytes on the wire for an edit in the middle of a large file, cubby sync beside rsync (issue 12).

Three edits of a ``--size`` file of random bytes (default 256 MiB): a one-byte overwrite, a
one-byte insert and a 4 KiB insert, each in the middle. For each, in one run:

- upload: a sync client holding the file syncs the edit; every byte both ways is counted by a
  proxy in front of the server (requests, JSON, headers and all). Beside it, ``rsync
  --no-whole-file`` of the edited file to a daemon holding the old one: "Total bytes sent"
  plus "Total bytes received" from ``--stats``;
- download: a second sync client holding the old version syncs the new one, counted the same
  way; beside it, rsync from the daemon (now holding the new file) to a folder holding the old.

The ratio is cubby's bytes over rsync's (the issue's target: at most 0.5).

    .venv/bin/python bench/edit_bytes.py [--size 256M]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from datasets import dataset, parse_size
from live import start_server
from machine import describe, summary_line
from report import Report, Row, fmt_bytes
from rsync_compare import RsyncDaemon, rsync
from wire import CountingProxy

from cubby.client.api import ApiClient
from cubby.client.sync.engine import SyncEngine

HERE = Path(__file__).resolve().parent
EDITS = {"one-byte overwrite": (1, 1), "one-byte insert": (0, 1), "4 KiB insert": (0, 4096)}
"""name -> (bytes replaced, bytes written) at the middle of the file."""


def edit(src: Path, dst: Path, replaced: int, written: int, seed: int) -> None:
    """``dst`` = ``src`` with ``replaced`` bytes at the middle replaced by ``written`` new ones."""
    mid = src.stat().st_size // 2
    new = bytes((b + 1 + seed) % 256 for b in os.urandom(written))
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        remaining = mid
        while remaining:
            piece = fi.read(min(remaining, 1 << 20))
            fo.write(piece)
            remaining -= len(piece)
        fo.write(new)
        fi.seek(mid + replaced)
        shutil.copyfileobj(fi, fo, 1 << 20)


def synced(engine: SyncEngine) -> None:
    rep = engine.run_once()
    if not rep.converged or rep.failed:
        raise SystemExit(f"sync did not converge: {rep.to_dict()}")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="256M")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/cubby-bench"))
    ap.add_argument("--name", default="edit_bytes")
    args = ap.parse_args(argv)
    subprocess.run(["bash", str(HERE / "setup.sh")], check=True)
    size = parse_size(args.size)
    machine = describe(args.scratch, {"rsync": ["rsync", "--version"]})
    print(summary_line(machine), flush=True)
    report = Report(args.name, machine, {"size": size})
    work = args.scratch / "edit-bytes"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    original = dataset(args.scratch, "random", size, seed=5)
    server, _ = start_server(work / "srv")
    daemon = RsyncDaemon(args.scratch / "rsyncd-edit").start()
    try:
        for k, (name, (replaced, written)) in enumerate(EDITS.items()):
            token = server.add_user(f"edit{k}")
            a_root, b_root = work / f"a{k}", work / f"b{k}"
            a_root.mkdir()
            b_root.mkdir()
            shutil.copyfile(original, a_root / "big.bin")
            with CountingProxy(server.port) as pa, CountingProxy(server.port) as pb:
                a = SyncEngine(a_root, ApiClient(pa.url, token, timeout=600))
                b = SyncEngine(b_root, ApiClient(pb.url, token, timeout=600))
                synced(a)
                synced(b)
                edit(original, work / "edited.bin", replaced, written, k)
                os.replace(work / "edited.bin", a_root / "big.bin")
                pa.reset()
                pb.reset()
                t0 = time.perf_counter()
                synced(a)
                up_s, up = time.perf_counter() - t0, pa.sent + pa.received
                t0 = time.perf_counter()
                synced(b)
                down_s, down = time.perf_counter() - t0, pb.sent + pb.received
                if (b_root / "big.bin").stat().st_size != (a_root / "big.bin").stat().st_size:
                    raise SystemExit("the download did not arrive whole")
                for e in (a, b):
                    e.close()
                    e.api.close()
            # rsync: the daemon holds the old file; the edit goes up, then comes down to an old copy
            rsync("--no-whole-file", str(original), daemon.url(f"e{k}.bin"))
            rs_up_s, s_up = rsync("--no-whole-file", "--ignore-times", str(a_root / "big.bin"), daemon.url(f"e{k}.bin"))
            old_copy = work / f"old{k}.bin"
            shutil.copyfile(original, old_copy)
            rs_down_s, s_down = rsync("--no-whole-file", "--ignore-times", daemon.url(f"e{k}.bin"), str(old_copy))
            rs_up = s_up["bytes_sent"] + s_up["bytes_received"]
            rs_down = s_down["bytes_sent"] + s_down["bytes_received"]
            ref_up = report.add(Row(name, "rsync upload (sent+received)", rs_up_s, extra={"bytes": rs_up}))
            report.add(Row(name, "cubby sync upload (all wire bytes)", up_s, reference=ref_up.name,
                           ratio=up / rs_up, extra={"bytes": up}))
            ref_down = report.add(Row(name, "rsync download (sent+received)", rs_down_s, extra={"bytes": rs_down}))
            report.add(Row(name, "cubby sync download (all wire bytes)", down_s, reference=ref_down.name,
                           ratio=down / rs_down, extra={"bytes": down}))
            report.notes.append(
                f"{name} in {fmt_bytes(size)}: upload cubby {up:,} B vs rsync {rs_up:,} B; "
                f"download cubby {down:,} B vs rsync {rs_down:,} B (ratio = cubby bytes / rsync bytes, target <= 0.5)"
            )
            shutil.rmtree(a_root, ignore_errors=True)
            shutil.rmtree(b_root, ignore_errors=True)
            old_copy.unlink(missing_ok=True)
    finally:
        daemon.stop()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report.finish()


if __name__ == "__main__":
    main(sys.argv[1:])

"""Sync benchmarks: save-to-appear latency between two running clients, and the bytes sent for a
one-byte edit of a large file beside rsync's delta transfer of the same edit.

    .venv/bin/python bench/sync_bench.py [--edits 50] [--size-mib 256]

Latency is from writing a file in one client's folder to the file appearing whole in the
other's (median and 99th percentile); it includes the change waiter's wake-up (polling until the
push notifier lands) and the watcher. Bytes are counted on the client's upload requests and
printed as a ratio to rsync's "Total bytes sent" (rsync --no-whole-file between two local
folders, the same edit).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from cubby.client.api import ApiClient
from cubby.client.sync.engine import SyncEngine
from tests.helpers.live_server import LiveServer


class CountingApi(ApiClient):
    sent = 0

    def upload_chunks(self, ns_id: int, items: Sequence[tuple[str, bytes]]) -> int:
        self.sent += sum(len(d) + 36 for _, d in items)
        return super().upload_chunks(ns_id, items)


def latency(srv: LiveServer, token: str, tmp: Path, edits: int) -> list[float]:
    env = {**os.environ, "CUBBY_URL": srv.url, "CUBBY_TOKEN": token, "PYTHONPATH": str(ROOT / "src")}
    a, b = tmp / "a", tmp / "b"
    a.mkdir()
    b.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "cubby", "sync", str(d)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for d in (a, b)]
    out = []
    try:
        time.sleep(2)
        for i in range(edits):
            data = os.urandom(4096) + str(i).encode()
            t0 = time.perf_counter()
            tmpf = a / f".edit{i}.tmp"
            tmpf.write_bytes(data)
            tmpf.rename(a / "edited.bin")  # an atomic save, as editors do
            while True:
                try:
                    if (b / "edited.bin").read_bytes() == data:
                        break
                except OSError:
                    pass
                time.sleep(0.002)
            out.append(time.perf_counter() - t0)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
    return out


def one_byte_edit(srv: LiveServer, token: str, tmp: Path, size_mib: int) -> tuple[int, int]:
    root = tmp / "big"
    root.mkdir()
    f = root / "big.bin"
    with open(f, "wb") as fh:
        fh.writelines(os.urandom(1024 * 1024) for _ in range(size_mib))
    api = CountingApi(srv.url, token)
    eng = SyncEngine(root, api)
    eng.run_once()
    api.sent = 0
    with open(f, "r+b") as fh:
        fh.seek(size_mib * 1024 * 1024 // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 1]))
    eng.run_once()
    ours = api.sent
    eng.close()
    # rsync's delta transfer of the same edit, between two local folders
    src, dst = tmp / "rsrc", tmp / "rdst"
    src.mkdir()
    dst.mkdir()
    shutil.copy(f, dst / "big.bin")
    with open(dst / "big.bin", "r+b") as fh:
        fh.seek(size_mib * 1024 * 1024 // 2)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 1]))  # dst holds the old version
    shutil.copy(f, src / "big.bin")
    r = subprocess.run(["rsync", "--no-whole-file", "--ignore-times", "--stats", str(src / "big.bin"), str(dst / "big.bin")],
                       capture_output=True, text=True, check=True)
    m = re.search(r"Total bytes sent: ([\d,]+)", r.stdout)
    theirs = int(m.group(1).replace(",", "")) if m else -1
    return ours, theirs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edits", type=int, default=50)
    ap.add_argument("--size-mib", type=int, default=256)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        with LiveServer(tmp / "server") as srv:
            token = srv.add_user("bench")
            lat = sorted(latency(srv, token, tmp, args.edits))
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(f"save-to-appear latency over {len(lat)} edits: median {statistics.median(lat) * 1000:.0f} ms, "
                  f"p99 {p99 * 1000:.0f} ms")
            ours, theirs = one_byte_edit(srv, token, tmp, args.size_mib)
            print(f"one-byte edit of a {args.size_mib} MiB file: cubby sent {ours} bytes, rsync sent {theirs} bytes "
                  f"(ratio {ours / theirs:.2f})")


if __name__ == "__main__":
    main()

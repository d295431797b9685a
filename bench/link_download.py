#!/usr/bin/env python3
"""Download a large file through a public link, as a ratio to the same download through the
authenticated API (``/api/v1/content/...``), measured in the same run on the same server.

    .venv/bin/python bench/link_download.py [--size-mib 1024] [--rounds 7] [--db URL]

A real server runs in its own process on loopback (SQLite by default). The file is uploaded
once; then each round downloads it through the API and through the link (alternating, so that
drift affects both), and through a link to its folder (a zip streamed on the fly). The bytes are
hashed as they arrive and checked. Results, with machine info, go to
``bench/results/link_download-<time>.json`` and are printed.

The goal: a link download costs no more than the API download (ratio near 1.0); both are served
by the same streaming code (`cubby.server.blocks.file_response`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from cubby.client.api import ApiClient
from cubby.client.upload import upload_file
from cubby.metadata.store import open_store
from tests.helpers.live_server import listening_socket


def machine() -> dict[str, object]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu or platform.processor(),
        "cpus": os.cpu_count(),
        "memory_bytes": mem,
        "load_avg_at_start": os.getloadavg(),
    }


def timed_get(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Seconds, bytes and SHA-256 of one streamed GET."""
    h = hashlib.sha256()
    n = 0
    start = time.perf_counter()
    with client.stream("GET", url, headers=headers) as r:
        r.raise_for_status()
        for piece in r.iter_raw(1024 * 1024):
            h.update(piece)
            n += len(piece)
    return time.perf_counter() - start, n, h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--db", default=None, help="metadata database URL (default: SQLite in a temp folder)")
    args = ap.parse_args()
    size = args.size_mib * 1024 * 1024

    with tempfile.TemporaryDirectory(prefix="cubby-bench-") as tmp:
        data_dir = Path(tmp) / "data"
        sock = listening_socket()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        cmd = [sys.executable, "-m", "cubby", "serve", "--data", str(data_dir), "--fd", str(sock.fileno())]
        if args.db:
            cmd += ["--db", args.db]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        with (Path(tmp) / "server.log").open("wb") as log:
            server = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, pass_fds=(sock.fileno(),))  # it keeps its own copy of the fd
        try:
            for _ in range(300):
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            store = open_store(args.db or f"sqlite:///{(data_dir / 'meta.db').resolve()}")
            _, token = store.create_user("bench")
            store.close()

            src = Path(tmp) / "big.bin"
            want = hashlib.sha256()
            with src.open("wb") as fh:  # random: incompressible, and no chunk repeats
                for i in range(0, size, 16 * 1024 * 1024):
                    piece = os.urandom(min(16 * 1024 * 1024, size - i))
                    fh.write(piece)
                    want.update(piece)
            expected = want.hexdigest()
            t0 = time.perf_counter()
            with ApiClient(url, token, timeout=600) as api:
                upload_file(api, src, "/bench/big.bin")
                upload_s = time.perf_counter() - t0
                file_link = api.create_link("/bench/big.bin")["url"]
                folder_link = api.create_link("/bench")["url"]
            src.unlink()

            api_runs, link_runs, zip_runs = [], [], []
            auth = {"Authorization": f"Bearer {token}"}
            with httpx.Client(timeout=600) as client:
                timed_get(client, url + "/api/v1/content/bench/big.bin", auth)  # warm the page cache
                for _ in range(args.rounds):
                    s, n, digest = timed_get(client, url + "/api/v1/content/bench/big.bin", auth)
                    assert n == size and digest == expected, "API download differs from the upload"
                    api_runs.append(s)
                    s, n, digest = timed_get(client, file_link)
                    assert n == size and digest == expected, "link download differs from the upload"
                    link_runs.append(s)
                    s, n, _ = timed_get(client, folder_link)
                    assert n > size, "the zip is smaller than the file in it"
                    zip_runs.append(s)
        finally:
            server.terminate()
            server.wait(timeout=30)

    best_api, best_link, best_zip = min(api_runs), min(link_runs), min(zip_runs)
    result = {
        "benchmark": "link_download",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "metadata": "sqlite" if not args.db else args.db.split(":", 1)[0],
        "size_bytes": size,
        "rounds": args.rounds,
        "upload_seconds": round(upload_s, 3),
        "api_seconds": [round(s, 3) for s in api_runs],
        "link_seconds": [round(s, 3) for s in link_runs],
        "folder_zip_seconds": [round(s, 3) for s in zip_runs],
        "api_mib_per_s": round(size / best_api / 2**20, 1),
        "link_mib_per_s": round(size / best_link / 2**20, 1),
        "folder_zip_mib_per_s": round(size / best_zip / 2**20, 1),
        "ratio_link_to_api_time": round(best_link / best_api, 3),
        "ratio_zip_to_api_time": round(best_zip / best_api, 3),
        "median_ratio_link_to_api_time": round(statistics.median(link_runs) / statistics.median(api_runs), 3),
        "median_ratio_zip_to_api_time": round(statistics.median(zip_runs) / statistics.median(api_runs), 3),
        # Each round's link and API downloads run back to back, under the same load: the median of
        # the per-round ratios is the figure least disturbed by other work on the machine.
        "paired_median_ratio_link_to_api_time": round(statistics.median(l / a for l, a in zip(link_runs, api_runs)), 3),
        "paired_median_ratio_zip_to_api_time": round(statistics.median(z / a for z, a in zip(zip_runs, api_runs)), 3),
        "note": "time / API time (1.0 = as fast as the API): best rounds, medians, and the median of per-round ratios",
    }
    out = ROOT / "bench" / "results" / f"link_download-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

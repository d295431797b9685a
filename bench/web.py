#!/usr/bin/env python3
"""The web app in a real headless Chromium (Debian's ``chromium``, driven by Playwright):

1. time to first render of a folder of 10,000 entries (first row on screen, and all 10,000
   counted), against reading the same listing through the JSON API from Python;
2. upload throughput of one large file through the browser (WebCrypto SHA-256 of 4 MiB chunks,
   then need_chunks / upload / commit), as a ratio to ``cubby put`` of a file of the same size
   to the same server in the same run (different random bytes each, so nothing deduplicates).

    .venv/bin/python bench/web.py [--size-mib 1024] [--rounds 3] [--entries 10000]

The server runs in this process's thread (uvicorn on a loopback port 0, SQLite); the browser and
``cubby put`` are separate processes talking HTTP to it. Results go to ``bench/results/web.json``.
"""

from __future__ import annotations

import argparse
import os
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
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")

from machine import describe, summary_line
from report import Report, Row

from tests.helpers.thread_server import ThreadServer

PASSWORD = "benchmark password"


def random_file(path: Path, size: int) -> None:
    with path.open("wb") as fh:
        left = size
        while left:
            n = min(left, 16 << 20)
            fh.write(os.urandom(n))
            left -= n


def list_all(url: str, token: str, path: str) -> int:
    n, cursor = 0, None
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        while True:
            params = {"path": path, "limit": "2000", **({"cursor": cursor} if cursor else {})}
            page = c.get("/api/v1/files/list", params=params).json()
            n += len(page["entries"])
            cursor = page["cursor"]
            if not page["has_more"]:
                return n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--entries", type=int, default=10_000)
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    scratch = Path(tempfile.mkdtemp(prefix="cubby-web-bench-"))
    info = describe(scratch)
    print(summary_line(info))
    report = Report("web", info, vars(args))
    with ThreadServer(scratch / "data") as server, sync_playwright() as p:
        token = server.add_user("bench", PASSWORD)
        commits = [{"path": f"/big/f{i:05d}.txt", "size": 0, "chunks": []} for i in range(args.entries)]
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as c:
            for i in range(0, len(commits), 1000):
                c.post("/api/v1/files/commit_batch", json={"commits": commits[i : i + 1000]}).raise_for_status()
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-dev-shm-usage"])
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        page = ctx.new_page()
        page.goto(server.url + "/")
        page.fill("#login-name", "bench")
        page.fill("#login-password", PASSWORD)
        page.click("#login-submit")
        expect(page.locator("#view-title")).to_have_text("All files")

        api_s, first_s, all_s = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            assert list_all(server.url, token, "/big") == args.entries
            api_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            page.goto(server.url + "/#/files/big")
            page.reload()
            page.locator("#rows tr").first.wait_for()
            first_s.append(time.perf_counter() - t0)
            expect(page.locator("#count")).to_have_text(f"{args.entries:,} items", timeout=120_000)
            all_s.append(time.perf_counter() - t0)
        g = f"folder of {args.entries} entries"
        report.add(Row(g, "API listing (httpx, all pages)", statistics.median(api_s), files=args.entries))
        report.add(Row(g, "browser: first rows on screen", statistics.median(first_s), files=args.entries,
                       reference="API listing (httpx, all pages)"))
        report.add(Row(g, "browser: all entries loaded", statistics.median(all_s), files=args.entries,
                       reference="API listing (httpx, all pages)"))

        size = args.size_mib << 20
        put_s, web_s = [], []
        env = {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token}
        for r in range(args.rounds):
            local = scratch / f"put-{r}.bin"
            random_file(local, size)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "cubby", "put", str(local), f"/put-{r}.bin"], env=env, check=True,
                           capture_output=True)
            put_s.append(time.perf_counter() - t0)
            local.unlink()
            local = scratch / f"web-{r}.bin"
            random_file(local, size)
            page.goto(server.url + "/#/files/")
            page.reload()
            expect(page.locator("#view-title")).to_have_text("All files")
            t0 = time.perf_counter()
            page.set_input_files("#pick-files", str(local))
            item = page.locator(f'#upload-list li[data-upload="/web-{r}.bin"]')
            expect(item).to_have_attribute("data-done", "yes", timeout=1_800_000)
            web_s.append(time.perf_counter() - t0)
            local.unlink()
        g = f"upload {args.size_mib} MiB"
        report.add(Row(g, "cubby put", statistics.median(put_s), nbytes=size, extra={"samples_seconds": put_s}))
        report.add(Row(g, "browser upload", statistics.median(web_s), nbytes=size, reference="cubby put",
                       extra={"samples_seconds": web_s}))
        browser.close()
    report.notes.append("ratio = reference seconds / seconds (below 1: slower than the reference)")
    report.notes.append("browser upload time includes picking the file (set_input_files) and hashing it")
    report.print()
    print("written to", report.write())


if __name__ == "__main__":
    main()

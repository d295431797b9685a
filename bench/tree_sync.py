"""A real tree synced by cubby beside rsync to a daemon, in one run (issue 12).

The tree is one that ships on the machine (default: the running Python's library folder, the
standard library and its ``site-packages``: 50,700 files in 8,700 folders on the machine the
figures come from; ``--stdlib-only`` leaves ``site-packages`` out, 7,700 files), copied once
into the scratch folder (``--max-files`` copies only the first N files, in walk order, with
their folders, for a short run). Measured, each beside rsync:

- first upload: ``SyncEngine.run_once`` on a folder holding the tree, against an empty
  server, beside ``rsync -a --fsync`` of the tree to an empty daemon module (durable against
  durable; plain ``rsync -a`` is shown too);
- no-op pass: the same engine's pass with nothing changed, beside rsync's second run;
- first download: a second client syncing into an empty folder, beside ``rsync -a --fsync``
  from the daemon into an empty folder;
- ``cubby put`` of the tree into a fresh server, files per second beside rsync --fsync's.

Each cubby sync runs in a child process (``--child``) so that its peak RSS is its own; the
child counts its HTTP requests through an httpx event hook.

    .venv/bin/python bench/tree_sync.py [--tree DIR] [--max-files 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

from live import cli, start_server
from machine import describe, summary_line
from reference import warm
from report import Report, Row
from rsync_compare import RsyncDaemon, rsync

HERE = Path(__file__).resolve().parent


def copy_tree(src: Path, dst: Path, max_files: int | None, skip: tuple[str, ...] = ()) -> tuple[int, int]:
    """Copy ``src`` (modes kept) to ``dst``, leaving out folders named in ``skip``; (files,
    folders) copied."""
    shutil.rmtree(dst, ignore_errors=True)
    files = folders = 0
    for root, dnames, fnames in os.walk(src):
        dnames[:] = sorted(d for d in dnames if d not in skip)
        rel = Path(root).relative_to(src)
        (dst / rel).mkdir(parents=True, exist_ok=True)
        folders += 1
        for f in sorted(fnames):
            if max_files is not None and files >= max_files:
                return files, folders
            s = Path(root) / f
            if s.is_symlink() or not s.is_file():
                continue
            try:
                shutil.copy2(s, dst / rel / f)
            except OSError:
                continue  # unreadable: not part of the data set
            files += 1
    return files, folders


def child(url: str, token: str, folder: Path, passes: int) -> None:
    """Run ``passes`` sync passes on ``folder``; print seconds, requests and peak RSS per pass."""
    sys.path.insert(0, str(HERE.parent / "src"))
    import httpx

    from cubby.client.api import ApiClient
    from cubby.client.sync.engine import SyncEngine

    count = [0]

    def hook(_: httpx.Request) -> None:
        count[0] += 1

    api = ApiClient(url, token, timeout=600)
    api.http.event_hooks["request"].append(hook)
    eng = SyncEngine(folder, api)
    out = []
    for _ in range(passes):
        count[0] = 0
        t0 = time.perf_counter()
        rep = eng.run_once()
        out.append({"seconds": time.perf_counter() - t0, "requests": count[0], "converged": rep.converged,
                    "applied": rep.applied, "failed": rep.failed[:5]})
    eng.close()
    api.close()
    print(json.dumps({"passes": out, "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def run_child(url: str, token: str, folder: Path, passes: int) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", url, token, str(folder), str(passes)],
        check=False, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"sync child failed: {proc.stderr[-3000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--child":
        child(argv[1], argv[2], Path(argv[3]), int(argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    ap.add_argument("--max-files", type=int, default=None, help="copy only this many files of the tree")
    ap.add_argument("--stdlib-only", action="store_true", help="leave site-packages out of the default tree")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/cubby-bench"))
    ap.add_argument("--name", default="tree_sync")
    args = ap.parse_args(argv)
    subprocess.run(["bash", str(HERE / "setup.sh")], check=True)
    machine = describe(args.scratch, {"rsync": ["rsync", "--version"]})
    print(summary_line(machine), flush=True)
    work = args.scratch / "tree-sync"
    shutil.rmtree(work, ignore_errors=True)
    tree = work / "tree"
    files, folders = copy_tree(args.tree, tree, args.max_files, ("site-packages",) if args.stdlib_only else ())
    print(f"tree: {files} files, {folders} folders from {args.tree}", flush=True)
    report = Report(args.name, machine, {"tree": str(args.tree), "files": files, "folders": folders})
    daemon = RsyncDaemon(args.scratch / "rsyncd-tree").start()
    a, b = work / "a", work / "b"
    try:
        warm(tree)
        rs_plain, _ = rsync("-a", str(tree) + "/", daemon.url("plain/"))
        rs_up, _ = rsync("-a", "--fsync", str(tree) + "/", daemon.url("tree/"))
        rs_noop, _ = rsync("-a", "--fsync", str(tree) + "/", daemon.url("tree/"))
        rs_down, _ = rsync("-a", "--fsync", daemon.url("tree/"), str(work / "rsync-down") + "/")
        shutil.rmtree(work / "rsync-down", ignore_errors=True)
        shutil.copytree(tree, a, symlinks=True)
        b.mkdir()
        server, token = start_server(work / "srv")
        try:
            warm(a)
            up = run_child(server.url, token, a, 2)
            down = run_child(server.url, token, b, 1)
        finally:
            server.stop()
        shutil.rmtree(work / "srv", ignore_errors=True)
        server, token = start_server(work / "srv-put")
        try:
            warm(tree)
            put_s, _ = cli(server, token, "put", str(tree), "/tree")
        finally:
            server.stop()
        group = "tree"
        report.add(Row(group, "rsync -a to daemon", rs_plain, files=files))
        ref = report.add(Row(group, "rsync -a --fsync to daemon", rs_up, files=files))
        first, noop = up["passes"]
        report.add(Row(group, "cubby first upload sync", first["seconds"], files=files, reference=ref.name,
                       ratio=first["seconds"] / rs_up,
                       extra={"requests": first["requests"], "max_rss_kib": up["max_rss_kib"], "converged": first["converged"]}))
        nref = report.add(Row(group, "rsync no-op (second run)", rs_noop, files=files))
        report.add(Row(group, "cubby no-op pass", noop["seconds"], files=files, reference=nref.name,
                       ratio=noop["seconds"] / rs_noop, extra={"requests": noop["requests"], "applied": noop["applied"]}))
        dref = report.add(Row(group, "rsync -a --fsync from daemon", rs_down, files=files))
        d = down["passes"][0]
        report.add(Row(group, "cubby first download sync", d["seconds"], files=files, reference=dref.name,
                       ratio=d["seconds"] / rs_down,
                       extra={"requests": d["requests"], "max_rss_kib": down["max_rss_kib"], "converged": d["converged"]}))
        report.add(Row(group, "cubby put (CLI)", put_s, files=files, reference=ref.name, ratio=rs_up / put_s))
        report.notes.append(
            "ratios: sync rows are cubby seconds / rsync seconds (target <= 1.0, no-op <= 1.5); "
            "the put row is cubby files/s / rsync --fsync files/s (target >= 1.0)"
        )
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    report.finish()


if __name__ == "__main__":
    main(sys.argv[1:])

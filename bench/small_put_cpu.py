"""CPU per file of an upload of many small files, client and server apart (issues 11 and 12).

Wall-clock ratios on the shared 2-core machine swing by 2x with the load; the CPU seconds each
side spends per file do not, so this is the figure to compare between two trees:

- ``put``: ``cubby put`` (the CLI, a child process) of ``--files`` files of 4 KiB
  (`datasets.small_files`) into a fresh server;
- ``sync``: a first ``SyncEngine.run_once`` upload (`tree_sync.py --child`) of ``--tree`` into a
  fresh server (its ``.cubby`` state folder removed first).

Client CPU is the child's (rusage of finished children), server CPU the server process's
(/proc). ``--src`` runs another tree's code (a copy of main, say) with this venv, through
PYTHONPATH, for a before/after pair run back to back (the server too: before branch srvfile only
the client did, and the server ran this tree's code)::

    .venv/bin/python bench/small_put_cpu.py --src /tmp/main-copy/src --rounds 3
    .venv/bin/python bench/small_put_cpu.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from datasets import small_files
from live import children_cpu, cli, server_cpu, start_server


def put_once(folder: Path, work: Path, files: int, src: Path | None = None) -> dict[str, float]:
    shutil.rmtree(work, ignore_errors=True)
    server, token = start_server(work, src=src)
    try:
        s0, c0 = server_cpu(server), children_cpu()
        seconds, _ = cli(server, token, "put", str(folder), "/small")
        s1, c1 = server_cpu(server), children_cpu()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return {"wall_s": round(seconds, 2), "files_per_s": round(files / seconds),
            "client_us_per_file": round((c1 - c0) / files * 1e6), "server_us_per_file": round((s1 - s0) / files * 1e6)}


def sync_once(tree: Path, work: Path, child: Path, src: Path | None = None) -> dict[str, float]:
    shutil.rmtree(tree / ".cubby", ignore_errors=True)
    files = sum(1 for p in tree.rglob("*") if p.is_file() and ".cubby" not in p.parts)
    shutil.rmtree(work, ignore_errors=True)
    server, token = start_server(work, src=src)
    try:
        s0, c0, t0 = server_cpu(server), children_cpu(), time.perf_counter()
        out = subprocess.run(
            [sys.executable, str(child), "--child", server.url, token, str(tree), "1"],
            check=True, capture_output=True, text=True,
        ).stdout
        seconds, s1, c1 = time.perf_counter() - t0, server_cpu(server), children_cpu()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(tree / ".cubby", ignore_errors=True)
    p = json.loads(out.strip().splitlines()[-1])["passes"][0]
    return {"files": files, "wall_s": round(seconds, 2), "requests": p["requests"],
            "client_cpu_s": round(c1 - c0, 2), "server_cpu_s": round(s1 - s0, 2)}


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", help="run this src folder's cubby (through PYTHONPATH)")
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--tree", type=Path, help="also time a first sync upload of this folder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/cubby-bench"))
    args = ap.parse_args(argv)
    if args.src:
        os.environ["PYTHONPATH"] = str(Path(args.src).resolve())
    folder = small_files(args.scratch, args.files, 4096)
    work = args.scratch / f"small-put-cpu-{os.getpid()}"
    for _ in range(args.rounds):
        src = Path(args.src) if args.src else None
        row = {"put": put_once(folder, work, args.files, src), "load": round(os.getloadavg()[0], 1)}
        if args.tree:
            # The child puts its own tree's src first on its path: run the one beside --src.
            other = Path(args.src).resolve().parent / "bench" / "tree_sync.py" if args.src else None
            row["sync"] = sync_once(args.tree, work, other if other and other.exists() else HERE / "tree_sync.py", src)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

"""A real tree synced by cubby beside rsync to a daemon, in one run (issue 12).

Two data sets (``--datasets tree,small``):

- ``tree``: one that ships on the machine (default: the running Python's library folder, the
  standard library and its ``site-packages``: 50,700 files in 8,700 folders on the machine the
  figures come from; ``--stdlib-only`` leaves ``site-packages`` out, 7,700 files), copied once
  into the scratch folder (``--max-files`` copies only the first N files, in walk order, with
  their folders, for a short run);
- ``small``: ``--small-files`` files of ``--small-size`` random bytes (default 10,000 x 4 KiB,
  `datasets.small_files`).

Measured on each, beside rsync, in ``--repeat`` interleaved rounds (each round runs every
step of every set, rsync then cubby, into fresh destinations; the table shows medians):

- first upload: ``SyncEngine.run_once`` on a folder holding the set, against an empty
  server, beside ``rsync -a --fsync`` to an empty daemon module (durable against durable;
  plain ``rsync -a`` is shown too);
- no-op pass: the same engine's next pass with nothing changed, beside rsync's second run;
  and the same pass in a new process (what ``cubby sync --once`` pays: no plan to reuse);
- first download: a second client syncing into an empty folder, beside ``rsync -a --fsync``
  from the daemon into an empty folder;
- ``cubby put`` of the set into a fresh server, files per second beside rsync --fsync's.

Each cubby sync runs in a child process (``--child``) so that its peak RSS is its own; the
child counts its HTTP requests through an httpx event hook.

    .venv/bin/python bench/tree_sync.py [--stdlib-only] [--datasets tree,small] [--repeat 3]

``--noop-only`` measures the no-op pass alone (one first upload per source tree to set it up,
untimed; then ``--repeat`` rounds of rsync's no-op beside cubby's, in a running client and in
new processes, with CPU seconds). ``--compare-src DIR`` runs the cubby client from another
checkout's ``src`` too (a second folder and server), interleaved in the same rounds: before
and after, side by side.
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

from datasets import parse_size, small_files
from live import cli, server_cpu, start_server
from machine import describe, summary_line
from reference import warm
from report import Report, Row, median_run
from rsync_compare import RsyncDaemon, rsync

HERE = Path(__file__).resolve().parent
STEPS = {"noop", "down", "put"}
"""The steps measured besides the first upload (``--steps``)."""


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


def child(url: str, token: str, folder: Path, passes: int, src: Path | None = None) -> None:
    """Run ``passes`` sync passes on ``folder`` with the client in ``src`` (default: this
    checkout's); print seconds, CPU seconds, requests and peak RSS per pass."""
    sys.path.insert(0, str(src or HERE.parent / "src"))
    for name in [m for m in sys.modules if m == "cubby" or m.startswith("cubby.")]:
        del sys.modules[name]  # imported by this module's helpers from this checkout: not the client measured
    import httpx

    from cubby.client.api import ApiClient
    from cubby.client.sync.engine import SyncEngine

    count = [0]

    def hook(_: httpx.Request) -> None:
        count[0] += 1

    api = ApiClient(url, token, timeout=600)
    if hasattr(api, "on_request"):  # every request, over httpx or DirectHttp
        api.on_request.append(lambda _method, _path: hook(None))  # type: ignore[arg-type]
    else:  # a tree from before the API's requests left httpx: all of them went through it
        api.http.event_hooks["request"].append(hook)
    eng = SyncEngine(folder, api)
    out = []
    for _ in range(passes):
        count[0] = 0
        t0, c0 = time.perf_counter(), time.process_time()
        rep = eng.run_once()
        out.append({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                    "requests": count[0], "converged": rep.converged,
                    "applied": rep.applied, "failed": rep.failed[:5]})
    eng.close()
    api.close()
    print(json.dumps({"passes": out, "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def run_child(url: str, token: str, folder: Path, passes: int, src: Path | None = None) -> dict[str, Any]:
    """Run ``passes`` sync passes in a new Python process; its figures, plus ``wall_seconds``
    and ``cpu_seconds``: the whole process from spawn to exit (interpreter start and imports
    included)."""
    start, cpu = time.perf_counter(), children_cpu()
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", url, token, str(folder), str(passes),
         *([str(src)] if src else [])],
        check=False, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"sync child failed: {proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "wall_seconds": time.perf_counter() - start,
            "cpu_seconds": children_cpu() - cpu}


def children_cpu() -> float:
    """User + system CPU seconds of the children waited for so far."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def noop_rounds(
    tree: Path, work: Path, daemon: RsyncDaemon, repeat: int, sources: dict[str, Path | None]
) -> dict[str, list[dict[str, Any]]]:
    """The no-op pass alone: rsync's (its client's CPU beside) and, for each client source, a
    running client's (passes 2 and 3 of a process whose first pass is the new-process pass
    alone) and a new process's whole run; one untimed first upload per source sets it up."""
    rsync("-a", str(tree) + "/", daemon.url("noop/"))
    setups: dict[str, tuple[Any, str, Path]] = {}
    out: dict[str, list[dict[str, Any]]] = {"rsync": []}
    try:
        for label, src in sources.items():
            folder = work / f"noop-{label}"
            shutil.rmtree(folder, ignore_errors=True)
            shutil.copytree(tree, folder, symlinks=True)
            server, token = start_server(work / f"srv-{label}")
            setups[label] = (server, token, folder)
            up = run_child(server.url, token, folder, 2, src)
            print(f"  {label}: first upload {up['passes'][0]['seconds']:.1f} s, then no-op {up['passes'][1]['seconds']:.2f} s", flush=True)
            out[label] = []
        for r in range(repeat):
            warm(tree)
            cpu = children_cpu()
            secs, _ = rsync("-a", str(tree) + "/", daemon.url("noop/"))
            out["rsync"].append({"seconds": secs, "cpu_seconds": children_cpu() - cpu})
            line = [f"rsync {secs:.2f} s"]
            for label, src in sources.items():
                server, token, folder = setups[label]
                warm_ = run_child(server.url, token, folder, 3, src)
                cold = run_child(server.url, token, folder, 1, src)
                for p in warm_["passes"] + cold["passes"]:
                    if p["requests"] > 1 or p["applied"] or not p["converged"]:
                        raise SystemExit(f"{label}: a no-op pass did something: {p}")
                out[label].append({"running": warm_["passes"][1:], "new_process": warm_["passes"][0], "whole": cold})
                line.append(f"{label} running {min(p['seconds'] for p in warm_['passes'][1:]):.2f} s, new process pass "
                            f"{warm_['passes'][0]['seconds']:.2f} s, whole {cold['wall_seconds']:.2f} s ({cold['cpu_seconds']:.2f} CPU s)")
            print(f"  round {r + 1} (load {os.getloadavg()[0]:.1f}): " + "; ".join(line), flush=True)
    finally:
        for server, _, folder in setups.values():
            server.stop()
            shutil.rmtree(folder, ignore_errors=True)
    return out


def report_noop(report: Report, files: int, results: dict[str, list[dict[str, Any]]]) -> None:
    """Rows of `noop_rounds`: each figure's median over the rounds, ratios to rsync's median."""
    ref = report.add(Row("noop", "rsync no-op (second run)", median_run(results["rsync"])["seconds"], files=files,
                         extra={"samples_seconds": [round(x["seconds"], 3) for x in results["rsync"]],
                                "client_cpu_seconds": [round(x["cpu_seconds"], 3) for x in results["rsync"]]}))
    for label, rounds in results.items():
        if label == "rsync":
            continue
        for name, get in (
            ("no-op pass, running client", lambda x: min(p["seconds"] for p in x["running"])),
            ("no-op pass, new process (the pass alone)", lambda x: x["new_process"]["seconds"]),
            ("no-op, new process, whole process (start, imports, pass)", lambda x: x["whole"]["wall_seconds"]),
        ):
            m = median_of(rounds, get)
            cpu = {
                "no-op pass, running client": lambda x: min(p["cpu_seconds"] for p in x["running"]),
                "no-op pass, new process (the pass alone)": lambda x: x["new_process"]["cpu_seconds"],
            }.get(name, lambda x: x["whole"]["cpu_seconds"])
            report.add(Row("noop", f"{label}: {name}", m["seconds"], files=files, reference=ref.name,
                           ratio=m["seconds"] / ref.seconds,
                           extra={"samples_seconds": m["samples_seconds"],
                                  "cpu_seconds": [round(cpu(x), 3) for x in rounds]}))


def measure_round(
    name: str, tree: Path, work: Path, daemon: RsyncDaemon, r: int, steps: set[str] = STEPS
) -> dict[str, Any]:
    """One interleaved round on one data set: every rsync reference, then every cubby step,
    each into a fresh destination (a fresh daemon module path, a fresh server). ``steps``
    leaves out what is not asked for (the first upload is always measured)."""
    out: dict[str, Any] = {"load_average": os.getloadavg()[0]}
    down_dir = work / f"rsync-down-{name}"
    shutil.rmtree(down_dir, ignore_errors=True)
    warm(tree)
    out["rs_plain"], _ = rsync("-a", str(tree) + "/", daemon.url(f"plain-{name}-{r}/"))
    out["rs_up"], _ = rsync("-a", "--fsync", str(tree) + "/", daemon.url(f"{name}-{r}/"))
    if "noop" in steps:
        out["rs_noop"], _ = rsync("-a", "--fsync", str(tree) + "/", daemon.url(f"{name}-{r}/"))
    if "down" in steps:
        out["rs_down"], _ = rsync("-a", "--fsync", daemon.url(f"{name}-{r}/"), str(down_dir) + "/")
    shutil.rmtree(down_dir, ignore_errors=True)
    a, b = work / "a", work / "b"
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(tree, a, symlinks=True)
    b.mkdir()
    server, token = start_server(work / "srv")
    try:
        warm(a)
        s0 = server_cpu(server)
        out["up"] = run_child(server.url, token, a, 2 if "noop" in steps else 1)
        out["up_server_cpu"] = server_cpu(server) - s0  # the first upload (and the no-op pass, if asked)
        if "noop" in steps:
            out["cold_noop"] = run_child(server.url, token, a, 1)
        if "down" in steps:
            out["down"] = run_child(server.url, token, b, 1)
    finally:
        server.stop()
    for d in (a, b, work / "srv"):
        shutil.rmtree(d, ignore_errors=True)
    if "put" in steps:
        server, token = start_server(work / "srv-put")
        try:
            warm(tree)
            out["put"], _ = cli(server, token, "put", str(tree), "/tree")
        finally:
            server.stop()
        shutil.rmtree(work / "srv-put", ignore_errors=True)
    up = out["up"]["passes"][0]
    line = (f"  round {r + 1} ({name}, load {out['load_average']:.1f}): rsync --fsync up {out['rs_up']:.2f} s, "
            f"cubby {up['seconds']:.2f} s (client CPU {up['cpu_seconds']:.1f} s, server CPU {out['up_server_cpu']:.1f} s)")
    if "noop" in steps:
        line += f"; no-op {out['rs_noop']:.2f} / {out['up']['passes'][1]['seconds']:.2f} s"
    if "down" in steps:
        line += f"; down {out['rs_down']:.2f} / {out['down']['passes'][0]['seconds']:.2f} s"
    if "put" in steps:
        line += f"; put {out['put']:.2f} s"
    print(line, flush=True)
    return out


def median_of(rounds: list[dict[str, Any]], get: Any) -> dict[str, Any]:
    """The round whose value of ``get`` is the median, with every round's value."""
    runs = [{"seconds": get(x), "round": x} for x in rounds]
    return median_run(runs)


def report_dataset(report: Report, group: str, files: int, rounds: list[dict[str, Any]]) -> None:
    """Rows of one data set: each step's median round, each ratio taken on medians."""

    def row(name: str, get: Any, reference: Row | None = None, extra: dict[str, Any] | None = None) -> Row:
        m = median_of(rounds, get)
        out = Row(group, name, m["seconds"], files=files, extra={"samples_seconds": m["samples_seconds"], **(extra or {})})
        if reference is not None:  # cubby seconds / rsync seconds: below 1 is faster than rsync
            out.reference, out.ratio = reference.name, out.seconds / reference.seconds
        return report.add(out)

    up_pass = lambda x: x["up"]["passes"][0]  # noqa: E731
    row("rsync -a to daemon", lambda x: x["rs_plain"])
    ref = row("rsync -a --fsync to daemon", lambda x: x["rs_up"])
    row("cubby first upload sync", lambda x: up_pass(x)["seconds"], ref,
                    extra={"requests": [up_pass(x)["requests"] for x in rounds],
                           "max_rss_kib": [x["up"]["max_rss_kib"] for x in rounds],
                           "client_cpu_seconds": [round(up_pass(x)["cpu_seconds"], 2) for x in rounds],
                           "server_cpu_seconds": [round(x["up_server_cpu"], 2) for x in rounds],
                           "converged": all(up_pass(x)["converged"] for x in rounds)})
    if "rs_noop" in rounds[0]:
        nref = row("rsync no-op (second run)", lambda x: x["rs_noop"])
        row("cubby no-op pass", lambda x: x["up"]["passes"][1]["seconds"], nref,
                      extra={"requests": [x["up"]["passes"][1]["requests"] for x in rounds],
                             "applied": [x["up"]["passes"][1]["applied"] for x in rounds]})
        row("cubby no-op pass, new process (cubby sync --once)", lambda x: x["cold_noop"]["passes"][0]["seconds"], nref,
                      extra={"requests": [x["cold_noop"]["passes"][0]["requests"] for x in rounds],
                             "max_rss_kib": [x["cold_noop"]["max_rss_kib"] for x in rounds]})
        row("cubby no-op, new process, whole process (start, imports, pass)", lambda x: x["cold_noop"]["wall_seconds"], nref)
    if "rs_down" in rounds[0]:
        dref = row("rsync -a --fsync from daemon", lambda x: x["rs_down"])
        row("cubby first download sync", lambda x: x["down"]["passes"][0]["seconds"], dref,
                      extra={"requests": [x["down"]["passes"][0]["requests"] for x in rounds],
                             "max_rss_kib": [x["down"]["max_rss_kib"] for x in rounds],
                             "converged": all(x["down"]["passes"][0]["converged"] for x in rounds)})
    if "put" in rounds[0]:
        put = row("cubby put (CLI)", lambda x: x["put"])
        put.reference, put.ratio = ref.name, ref.seconds / put.seconds  # files/s over rsync's files/s
    report.notes.append(
        f"{group}: load average at the start of each round {[round(x['load_average'], 1) for x in rounds]}"
    )


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--child":
        child(argv[1], argv[2], Path(argv[3]), int(argv[4]), Path(argv[5]) if len(argv) > 5 else None)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    ap.add_argument("--max-files", type=int, default=None, help="copy only this many files of the tree")
    ap.add_argument("--stdlib-only", action="store_true", help="leave site-packages out of the default tree")
    ap.add_argument("--datasets", default="tree,small", help="tree (the real tree), small (many small files), or both")
    ap.add_argument("--small-files", type=int, default=10_000, help="files of the small-files set")
    ap.add_argument("--small-size", default="4K", help="size of each file of the small-files set")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds per data set (medians are reported)")
    ap.add_argument("--scratch", type=Path, default=Path("/tmp/cubby-bench"))
    ap.add_argument("--name", default="tree_sync")
    ap.add_argument("--steps", default=",".join(sorted(STEPS)),
                    help="what to measure besides the first upload: noop, down, put (comma-separated; 'up' for none)")
    ap.add_argument("--noop-only", action="store_true", help="measure the no-op pass alone, on the tree (see above)")
    ap.add_argument("--compare-src", type=Path, default=None,
                    help="with --noop-only: also run the client from this src folder (another checkout's), as 'base'")
    args = ap.parse_args(argv)
    steps = {x.strip() for x in args.steps.split(",")} & STEPS
    wanted = [d.strip() for d in args.datasets.split(",") if d.strip()]
    subprocess.run(["bash", str(HERE / "setup.sh")], check=True)
    machine = describe(args.scratch, {"rsync": ["rsync", "--version"]})
    print(summary_line(machine), flush=True)
    work = args.scratch / "tree-sync"
    shutil.rmtree(work, ignore_errors=True)
    sets: list[tuple[str, Path, int, int]] = []
    if args.noop_only:
        tree = work / "tree"
        files, folders = copy_tree(args.tree, tree, args.max_files, ("site-packages",) if args.stdlib_only else ())
        print(f"tree: {files} files, {folders} folders from {args.tree}", flush=True)
        report = Report(args.name, machine, {"tree": str(args.tree), "files": files, "folders": folders,
                                             "repeat": args.repeat, "noop_only": True,
                                             "compare_src": str(args.compare_src) if args.compare_src else None})
        sources: dict[str, Path | None] = {"this": None}
        if args.compare_src is not None:
            sources = {"base": args.compare_src.resolve(), **sources}
        daemon = RsyncDaemon(args.scratch / "rsyncd-tree").start()
        try:
            report_noop(report, files, noop_rounds(tree, work, daemon, args.repeat, sources))
        finally:
            daemon.stop()
            shutil.rmtree(work, ignore_errors=True)
        report.notes.append("ratios: cubby seconds / rsync no-op seconds (target <= 1.5); cpu_seconds per round; "
                            "rsync's client_cpu_seconds leave out its daemon's")
        report.finish()
        return
    if "tree" in wanted:
        tree = work / "tree"
        files, folders = copy_tree(args.tree, tree, args.max_files, ("site-packages",) if args.stdlib_only else ())
        print(f"tree: {files} files, {folders} folders from {args.tree}", flush=True)
        sets.append(("tree", tree, files, folders))
    if "small" in wanted:
        size = parse_size(args.small_size)
        small = small_files(args.scratch, args.small_files, size)
        sets.append((f"{args.small_files}x{args.small_size}", small, args.small_files, args.small_files // 1000 + 1))
    params = {"tree": str(args.tree), "stdlib_only": args.stdlib_only, "repeat": args.repeat, "steps": sorted(steps),
              "datasets": {name: {"path": str(path), "files": files, "folders": folders} for name, path, files, folders in sets}}
    report = Report(args.name, machine, params)
    daemon = RsyncDaemon(args.scratch / "rsyncd-tree").start()
    try:
        results: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in sets}
        for r in range(args.repeat):
            for name, path, _, _ in sets:  # interleaved: each round runs every set, rsync then cubby
                results[name].append(measure_round(name, path, work, daemon, r, steps))
        for name, _, files, _ in sets:
            report_dataset(report, name, files, results[name])
        report.notes.append(
            "ratios: sync rows are cubby seconds / rsync seconds (target <= 1.0, no-op <= 1.5); "
            "the put row is cubby files/s / rsync --fsync files/s (target >= 1.0); every row is "
            "the median of the rounds (samples_seconds), each ratio a ratio of medians"
        )
    finally:
        daemon.stop()
        shutil.rmtree(work, ignore_errors=True)
    report.finish()


if __name__ == "__main__":
    main(sys.argv[1:])

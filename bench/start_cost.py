"""What a start of `cubby serve` costs: seconds until it answers ``/healthz``, and its CPU.

Every process of a deployment pays it (each worker, each role, each restart), every command
that opens the metadata store pays most of it, and the test suite starts about three hundred
servers. Two kinds of start, each into its own data folder:

- ``fresh``: a new data folder (the schema is made: Alembic runs every migration);
- ``again``: the same folder a second time (the database is at the newest revision).

The reference, in the same run, is the floor no start can go below: a bare interpreter that
imports what a server cannot do without (``uvicorn``, ``starlette``, ``sqlalchemy``) and
exits. The ratio is the reference's CPU over the start's (1.0: a start costs no more than its
libraries' import). ``--src`` runs another tree's ``src`` (a copy of main, say) through
PYTHONPATH, for a before/after pair::

    .venv/bin/python bench/start_cost.py
    .venv/bin/python bench/start_cost.py --src /tmp/main-copy/src --name start_cost_before
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from machine import describe, summary_line
from report import Report, Row

from tests.helpers.live_server import listening_socket

FLOOR = "import uvicorn, starlette.applications, sqlalchemy"
"""The reference's imports: the server's web stack and its database toolkit."""


def start_once(data: Path, env: dict[str, str]) -> tuple[float, float]:
    """Start ``cubby serve`` on ``data``; (seconds until /healthz answers 200, CPU seconds of the
    process from its start to its exit, stopped with SIGTERM as soon as it answered). It
    serves on a socket this process made and hands down, as the tests' servers do."""
    sock = listening_socket()
    port = sock.getsockname()[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cubby", "serve", "--data", str(data), "--fd", str(sock.fileno())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, pass_fds=(sock.fileno(),),
    )
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"cubby serve exited with {proc.returncode}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.005)
        seconds = time.perf_counter() - t0
        proc.send_signal(signal.SIGTERM)
    except BaseException:
        proc.kill()
        raise
    finally:
        sock.close()
    _, _, use = os.wait4(proc.pid, 0)
    return seconds, use.ru_utime + use.ru_stime


def floor_once(env: dict[str, str]) -> tuple[float, float]:
    """The reference: (seconds, CPU seconds) of an interpreter that imports `FLOOR` and exits."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR], env=env)
    _, status, use = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"the reference failed: {FLOOR}")
    return time.perf_counter() - t0, use.ru_utime + use.ru_stime


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, help="run this src folder's cubby (through PYTHONPATH)")
    ap.add_argument("--rounds", type=int, default=7, help="starts of each kind (default 7); medians are shown")
    ap.add_argument("--name", default="start_cost")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    # Compiled first, as scripts/dev.py does: where PYTHONDONTWRITEBYTECODE is set (as on CI
    # machines), a tree never compiled is compiled again at every start.
    src = args.src or HERE.parent / "src"
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True, stdout=subprocess.DEVNULL)
    if args.src:
        env["PYTHONPATH"] = str(args.src.resolve())
    info = describe(Path(tempfile.gettempdir()))
    print(summary_line(info))
    report = Report(args.name, info, {"rounds": args.rounds, "src": str(args.src) if args.src else None})
    runs: dict[str, list[tuple[float, float]]] = {"reference": [], "fresh": [], "again": []}
    for _ in range(args.rounds):  # interleaved, so that a change in the machine's load hits all three
        runs["reference"].append(floor_once(env))
        with tempfile.TemporaryDirectory(prefix="cubby-start-") as tmp:
            runs["fresh"].append(start_once(Path(tmp), env))
            runs["again"].append(start_once(Path(tmp), env))
    ref_cpu = statistics.median(c for _, c in runs["reference"])
    for kind, name in (("reference", "import uvicorn, starlette, sqlalchemy"),
                       ("fresh", "cubby serve, new data folder"), ("again", "cubby serve, same folder again")):
        seconds = statistics.median(s for s, _ in runs[kind])
        cpu = statistics.median(c for _, c in runs[kind])
        report.add(Row("start", name, seconds, ratio=None if kind == "reference" else ref_cpu / cpu, extra={
            "cpu_s": round(cpu, 3), "samples": [[round(s, 3), round(c, 3)] for s, c in runs[kind]],
        }))
        print(f"{name:38s} healthy after {seconds:.3f} s, CPU {cpu:.3f} s"
              + ("" if kind == "reference" else f", reference CPU / CPU = {ref_cpu / cpu:.2f}"))
    report.notes.append("ratio = the reference's CPU seconds over the start's (medians); seconds = time until /healthz answered")
    print(f"results: {report.write()}")


if __name__ == "__main__":
    main(sys.argv[1:])

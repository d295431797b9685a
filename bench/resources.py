"""Resource use that used to be asserted in tests: memory and idle CPU, each beside a reference.

- **sync client memory**: peak RSS (VmHWM) of `cubby sync --once` uploading, then downloading,
  a 256 MiB file, as a ratio to the same for a 16 MiB file (1.0 = memory does not grow with
  file size; the design keeps at most a few 16 MiB windows).
- **link zip memory**: the server's peak RSS growth while it streams a folder link's zip of
  256 MiB, as a share of the zip's size (a streamed zip holds a few chunks, not the file).
- **idle sync clients**: CPU seconds two running `cubby sync` daemons use in 6 s with nothing
  to do, as a share of the 6 s (the engine never polls; a safety pass runs every 60 s).

    .venv/bin/python bench/resources.py [--big-mib 256]

Prints a table, records the machine, writes bench/results/resources.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
from machine import cpu_seconds, describe, summary_line
from report import Report, Row

from cubby.client.api import ApiClient
from cubby.client.upload import upload_file
from tests.helpers.live_server import LiveServer

MiB = 1024 * 1024

# VmHWM, not getrusage: ru_maxrss survives exec and would report the parent's peak.
MAXRSS = (
    "import atexit, sys\n"
    "hwm = lambda: next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
    "atexit.register(lambda: sys.stderr.write('MAXRSS %s\\n' % hwm()))\n"
    "from cubby.cli import main\n"
    "main(prog_name='cubby')\n"
)


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def client_env(server: LiveServer, token: str) -> dict[str, str]:
    return {**os.environ, "CUBBY_URL": server.url, "CUBBY_TOKEN": token, "PYTHONPATH": str(ROOT / "src")}


def peak_sync_kib(env: dict[str, str], folder: Path) -> int:
    r = subprocess.run([sys.executable, "-c", MAXRSS, "sync", "--once", str(folder)], env=env,
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"cubby sync failed: {r.stderr[-2000:]}")
    return int(r.stderr.rsplit("MAXRSS ", 1)[1].split()[0])


def sync_memory(report: Report, scratch: Path, big_mib: int) -> None:
    piece = os.urandom(MiB)
    with LiveServer(scratch / "sync-server") as server:
        env = client_env(server, server.add_user("mem"))
        peaks: dict[tuple[str, int], int] = {}
        for mib in (16, big_mib):
            up, down = scratch / f"up{mib}", scratch / f"down{mib}"
            up.mkdir()
            with open(up / f"big{mib}.bin", "wb") as fh:
                fh.writelines(i.to_bytes(4, "big") + piece[4:] for i in range(mib))
            peaks[("upload", mib)] = peak_sync_kib(env, up)
            peaks[("download", mib)] = peak_sync_kib(env, down)
    for way in ("upload", "download"):
        small, big = peaks[(way, 16)], peaks[(way, big_mib)]
        report.add(Row("sync client peak RSS", f"{way} {big_mib} MiB", 0.0, ratio=big / small, reference=f"{way} 16 MiB",
                       extra={"peak_kib": big, "reference_peak_kib": small}))
        print(f"sync --once {way}: {small / 1024:.0f} MiB peak for 16 MiB, {big / 1024:.0f} MiB for {big_mib} MiB")


def link_memory(report: Report, scratch: Path) -> None:
    payload = os.urandom(64 * MiB)
    local = scratch / "big.bin"
    local.write_bytes(payload)
    with LiveServer(scratch / "link-server") as server:
        assert server.proc is not None
        with ApiClient(server.url, server.add_user("dora"), timeout=300) as api:
            for i in range(4):  # 256 MiB in the folder; deduplicated, 64 MiB stored
                upload_file(api, local, f"/big/copy{i}.bin")
            link = api.create_link("/big")
        pid = server.proc.pid
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before = status_kib(pid, "VmRSS")
        sent = 0
        t0 = time.perf_counter()
        with httpx.stream("GET", link["url"], timeout=300) as r:
            r.raise_for_status()
            for piece in r.iter_raw(MiB):
                sent += len(piece)
        seconds = time.perf_counter() - t0
        growth = (status_kib(pid, "VmHWM") - before) * 1024
    report.add(Row("link zip", "server RSS growth / zip size", seconds, nbytes=sent, ratio=growth / sent,
                   reference="bytes sent", extra={"rss_growth_bytes": growth}))
    print(f"link zip: {sent / MiB:.0f} MiB sent, server grew by {growth / MiB:.1f} MiB")


def idle_cpu(report: Report, scratch: Path, seconds: float = 6.0) -> None:
    with LiveServer(scratch / "idle-server") as server:
        env = client_env(server, server.add_user("idle"))
        procs = []
        for name in ("one", "two"):
            d = scratch / name
            d.mkdir()
            with open(scratch / f"{name}.log", "wb") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "cubby", "sync", str(d)], env=env,
                                              stdout=log, stderr=log))
        try:
            time.sleep(5)  # first pass done, push connection open
            before = [cpu_seconds(p.pid) for p in procs]
            time.sleep(seconds)
            used = [cpu_seconds(p.pid) - b for p, b in zip(procs, before)]
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
    for i, u in enumerate(used):
        report.add(Row("idle sync client", f"client {i + 1} CPU seconds", u, ratio=u / seconds,
                       reference=f"{seconds:.0f} s wall"))
    print(f"idle clients used {used} CPU seconds in {seconds:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--big-mib", type=int, default=256, help="size of the large file for the sync memory figure")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cubby-bench-") as tmp:
        scratch = Path(tmp)
        info = describe(scratch)
        print(summary_line(info))
        report = Report("resources", info, {"big_mib": args.big_mib})
        sync_memory(report, scratch, args.big_mib)
        link_memory(report, scratch)
        idle_cpu(report, scratch)
        report.notes.append("ratios: peak RSS big/small file (1.0 = flat); RSS growth per byte of zip; CPU s per wall s")
        report.print()
        print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()

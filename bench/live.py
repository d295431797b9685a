"""A real cubby server and the real `cubby` command, for the transfer benchmarks.

The server is the one the tests start (`tests/helpers/live_server.py`: `cubby serve` in its own process on a loopback port), so the benchmarks measure exactly
what the integration tests exercise. The CLI runs as a subprocess, as a user would run it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from machine import cpu_seconds

from tests.helpers.live_server import LiveServer

__all__ = ["LiveServer", "children_cpu", "cli", "server_cpu", "start_server"]


def server_cpu(server: LiveServer) -> float:
    """CPU seconds (user + system, all threads) the server process has used so far."""
    assert server.proc is not None
    return cpu_seconds(server.proc.pid)


def children_cpu() -> float:
    """CPU seconds used by this process's finished children (each `cli` run, once it ended)."""
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def start_server(
    folder: Path, *, blocks: str | None = None, src: Path | None = None, workers: int = 1
) -> tuple[LiveServer, str]:
    """A fresh server with its data under ``folder``, and a token for a new user; ``blocks``
    is its ``--blocks`` location (an ``s3://`` URL, say) when not the default folder; ``src``:
    run that ``src`` folder's cubby (another tree's, for a before/after pair), not this one's;
    ``workers``: its ``--workers``."""
    env = {"PYTHONPATH": str(Path(src).resolve())} if src else None
    extra = (["--blocks", blocks] if blocks else []) + (["--workers", str(workers)] if workers != 1 else [])
    server = LiveServer(folder / "server", extra_args=extra or None, env=env).start()
    return server, server.add_user("bench")


def cli(
    server: LiveServer, token: str, *args: str, url: str | None = None
) -> tuple[float, list[dict[str, Any]]]:
    """Run ``cubby --json ARGS`` against ``server`` (or ``url``, e.g. a proxy in front of it);
    seconds and the JSON lines it printed."""
    env = {
        **os.environ,
        "CUBBY_URL": url or server.url,
        "CUBBY_TOKEN": token,
        "XDG_CONFIG_HOME": str(server.data_dir.parent / "config"),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cubby", "--json", *args], check=False, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"cubby {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return seconds, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

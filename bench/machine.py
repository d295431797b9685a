"""What machine a benchmark ran on, recorded beside every result.

A figure means little without the machine behind it, and this one is shared (several people
on two cores), so the load average at the start and end of a run is recorded too: a ratio
measured under load is still comparable, because the reference runs under the same load.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _tool_version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else None


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far, from /proc; with
    ``children``, its reaped children's too (a server that forks workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11 : 15 if children else 13]) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def describe(scratch: Path, tools: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """CPU model, cores, RAM, kernel, Python, free disk where the scratch data lives, the date
    (UTC), the load average, and the versions of the ``tools`` compared against."""
    scratch.mkdir(parents=True, exist_ok=True)
    disk = shutil.disk_usage(scratch)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    info: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable,
        "ram_bytes": _mem_total_bytes(),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "scratch": str(scratch),
        "disk_free_bytes": disk.free,
        "load_average_start": load_average(),
    }
    for name, cmd in (tools or {}).items():
        info[f"{name}_version"] = _tool_version(cmd)
    return info


def summary_line(info: dict[str, Any]) -> str:
    ram = info.get("ram_bytes") or 0
    return (
        f"{info['date_utc']}  {info['cpu_model']}, {info['cpu_cores']} cores, {ram / 2**30:.0f} GiB RAM, "
        f"kernel {info['kernel']}, {info['python']}, {info['disk_free_bytes'] / 2**30:.0f} GiB free in "
        f"{info['scratch']}, load {info['load_average_start']}"
    )

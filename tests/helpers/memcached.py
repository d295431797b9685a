"""A memcached of the test's own (Debian's ``memcached``, installed by scripts/dev.py) on a
unix socket in a temporary folder: no port to pick, nobody else's keys, and it can be killed
and started again on the same address to simulate a cache server restart."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


class Memcached:
    def __init__(self, folder: Path) -> None:
        self.socket = folder / "memcached.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"memcached://{self.socket}"

    def start(self) -> Memcached:
        binary = shutil.which("memcached") or "/usr/bin/memcached"
        if not os.path.exists(binary):
            msg = "memcached is not installed (scripts/dev.py test installs Debian's package)"
            if os.environ.get("CI") == "true":
                pytest.fail(msg)
            pytest.skip(msg)
        self.socket.unlink(missing_ok=True)
        args = [binary, "-s", str(self.socket), "-m", "64", "-t", "1"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args += ["-u", "root"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("memcached did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        self.socket.unlink(missing_ok=True)

"""moto's S3 server in a child process, bound to port 0 on loopback, its port read back.

A subprocess (not moto's in-process thread) so that the server's Python work does not share
the test's interpreter lock, and so that a test can be sure nothing but HTTP joins the two.
The child prints its port once it listens; the parent reads that one line.

    python -m tests.helpers.moto_server      # prints the port, serves until killed
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# moto accepts any key; the client library still wants one to sign with.
MOTO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@contextmanager
def moto_server() -> Iterator[str]:
    """Start moto, yield its endpoint URL (``http://127.0.0.1:PORT``), stop it afterwards."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.helpers.moto_server"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            raise RuntimeError(f"moto server did not start (said {line!r}, exit {proc.poll()})")
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        proc.kill()
        proc.wait()


def _serve() -> None:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    print(server.get_host_and_port()[1], flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    _serve()

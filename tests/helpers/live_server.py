"""A real cubby server in its own process on a loopback port, for tests.

It can be stopped and started again on the same port and data, to simulate outages and
restarts; `add_user` opens the metadata store directly, as `cubby user add` does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def listening_socket(port: int = 0) -> socket.socket:
    """A socket bound to 127.0.0.1 (port 0: the kernel picks) and listening, for a server
    process to inherit. The test keeps it open, so nobody else can take the port between a
    restart's stop and start."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def wait_healthy(url: str, proc: subprocess.Popen[bytes], log_path: Path, timeout: float = 30.0) -> None:
    """Until ``url``/healthz answers 200; raises with the end of the log if ``proc`` exits or
    the time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not start: {log_path.read_text()[-3000:]}")


class LiveServer:
    def __init__(
        self, data_dir: Path, *, db_url: str | None = None, port: int | None = None, role: str = "all",
        extra_args: list[str] | None = None, env: dict[str, str] | None = None,
        shards: dict[str, str] | None = None, place_new: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.db_url = db_url
        self.shards = shards
        """``{name: URL}`` of a sharded deployment whose directory is ``db_url`` (None: one database)."""
        self.place_new = place_new
        self.sock: socket.socket | None = listening_socket(port or 0)
        self.port = int(self.sock.getsockname()[1])
        self.role = role
        self.extra_args = extra_args or []
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metadata_url(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'meta.db').resolve()}"

    def start(self, timeout: float = 30.0) -> LiveServer:
        if self.sock is None:  # restarting: the same port again, as a restarted server would
            self.sock = listening_socket(self.port)
        fd = self.sock.fileno()
        args = [sys.executable, "-m", "cubby", "serve", "--data", str(self.data_dir), "--fd", str(fd), "--role", self.role]
        if self.db_url:
            args += ["--db", self.db_url]
        for name, url in (self.shards or {}).items():
            args += ["--shard", f"{name}={url}"]
        if self.place_new:
            args += ["--place-new", self.place_new]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]), **self.env}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(args + self.extra_args, stdout=log, stderr=log, env=env, pass_fds=(fd,))
        wait_healthy(self.url, self.proc, self.log_path, timeout)
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server; its port refuses connections until `start` binds it again."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def add_user(self, name: str, shard: str | None = None) -> str:
        """Create a user (as `cubby user add` does); on a sharded deployment, ``shard`` names
        where their root goes (else the server's placement rule)."""
        from cubby.metadata.store import open_store

        store = open_store(self.metadata_url, shards=self.shards, place_new=shard or self.place_new)
        try:
            return store.create_user(name)[1]
        finally:
            store.close()

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def settled_logs(self, timeout: float = 10.0) -> str:
        """The log once every request answered before this call has its line in it. A
        request's line is written just after its answer is sent, so a test that reads the log
        as soon as it has an answer may miss that line (and count one request too few). A
        ``/healthz`` sent now is answered after them, and its line is waited for. A stopped
        server's log is whole already."""
        if self.proc is None:
            return self.logs()
        probes = self.logs().count('"/healthz"')
        httpx.get(self.url + "/healthz", timeout=timeout)
        deadline = time.monotonic() + timeout
        while (text := self.logs()).count('"/healthz"') <= probes and time.monotonic() < deadline:
            time.sleep(0.01)
        return text

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

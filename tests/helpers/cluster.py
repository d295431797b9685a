"""A cubby deployment of several processes per role behind haproxy, for tests and benches.

Every process is a `LiveServer` with ``--role``; all share one PostgreSQL database, one block
store folder, one Redis broker (a prefix of its own, so parallel runs never hear each other)
and, given ``cache``, one metadata cache server (``--cache``). haproxy serves on a socket this process bound to port 0 and hands over (``bind
fd@N``), so its port is never free for anybody else to take; its configuration is the one
the project ships (`cubby.deploy.haproxy`).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

from cubby.deploy.haproxy import Backends, render
from tests.helpers.live_server import LiveServer, listening_socket, wait_healthy

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


class Cluster:
    def __init__(
        self, tmp: Path, db_url: str, *, meta: int = 2, blocks: int = 2, notify: int = 2, cache: str | None = None
    ) -> None:
        self.tmp = tmp
        self.db_url = db_url
        self.sock = listening_socket(0)
        self.port = int(self.sock.getsockname()[1])
        self.broker = f"redis://127.0.0.1:6379/0?prefix=t{uuid.uuid4().hex[:12]}"
        data = tmp / "shared" / "data"  # one block store folder for every process
        common = [
            "--broker", self.broker, "--trusted-proxy", "127.0.0.1",
            "--advertise-meta", self.url, "--advertise-blocks", self.url, "--advertise-notify", self.url,
        ]
        if cache is not None:
            common += ["--cache", cache]
        self.servers: dict[str, list[LiveServer]] = {
            role: [LiveServer(data, db_url=db_url, role=role, extra_args=common) for _ in range(n)]
            for role, n in (("meta", meta), ("blocks", blocks), ("notify", notify))
        }
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.haproxy_log = tmp / "haproxy.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def all(self) -> list[LiveServer]:
        return [s for group in self.servers.values() for s in group]

    def config(self) -> str:
        addr = {role: [f"127.0.0.1:{s.port}" for s in group] for role, group in self.servers.items()}
        return render(Backends(addr["meta"], addr["blocks"], addr["notify"]), bind=f"fd@{self.sock.fileno()}", maxconn=4000)

    def start(self) -> Cluster:
        self.servers["meta"][0].start()  # the first one migrates the empty database
        for server in self.all()[1:]:
            server.start()
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text(self.config())
        with open(self.haproxy_log, "ab") as log:
            self.haproxy = subprocess.Popen(
                [HAPROXY, "-f", str(cfg), "-db"], stdout=log, stderr=log, pass_fds=(self.sock.fileno(),),
            )
        wait_healthy(self.url, self.haproxy, self.haproxy_log)
        return self

    def add_user(self, name: str) -> str:
        return self.servers["meta"][0].add_user(name)

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.terminate()
            try:
                self.haproxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait()
            self.haproxy = None
        for server in self.all():
            server.stop()
        self.sock.close()

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

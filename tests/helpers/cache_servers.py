"""Cache servers of a test's own, on a unix socket in a temporary folder: Debian's
``memcached`` and ``redis-server`` (installed by scripts/dev.py). No port to pick, nobody
else's keys, and each can be killed (SIGKILL) and started again on the same address to
simulate a cache server that dies and restarts. `Partition` stands between one client and
the server to cut that client off (what it sends is dropped: its requests time out) while
others still reach the server.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Self

import pytest


class CacheServer:
    """One server process on ``socket``; `command` says how to start it."""

    binary = ""
    kind = ""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.socket = folder / f"{self.binary}.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_at(self.socket)

    def url_at(self, path: Path) -> str:
        """The cache URL of a server listening on ``path``."""
        raise NotImplementedError

    def command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def start(self) -> Self:
        binary = shutil.which(self.binary) or f"/usr/bin/{self.binary}"
        if not os.path.exists(binary):
            msg = f"{self.binary} is not installed (scripts/dev.py test installs Debian's package)"
            if os.environ.get("CI") == "true":
                pytest.fail(msg)
            pytest.skip(msg)
        self.socket.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.command(binary), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(self.socket))
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"{self.binary} did not start")

    def stop(self) -> None:
        """SIGKILL: the server dies at once, as in a crash; its socket refuses connections."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None



class Memcached(CacheServer):
    binary = "memcached"
    kind = "memcached"

    def url_at(self, path: Path) -> str:
        return f"memcached://{path}"

    def command(self, binary: str) -> list[str]:
        args = [binary, "-s", str(self.socket), "-m", "64", "-t", "1"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args += ["-u", "root"]
        return args


class RedisServer(CacheServer):
    """A Redis run as the cache must be run: without persistence, so a restart is empty
    (``persist=True``: with an append-only file, as the cache must not be run)."""

    binary = "redis-server"
    kind = "redis"

    def __init__(self, folder: Path, *, persist: bool = False) -> None:
        super().__init__(folder)
        self.persist = persist

    def url_at(self, path: Path) -> str:
        return f"redis+unix://{path}?db=0"

    def command(self, binary: str) -> list[str]:
        return [binary, "--port", "0", "--unixsocket", str(self.socket), "--save", "",
                "--appendonly", "yes" if self.persist else "no", "--dir", str(self.folder)]


CACHE_SERVERS: dict[str, type[CacheServer]] = {"memcached": Memcached, "redis": RedisServer}


def start_cache_server(kind: str, folder: Path) -> CacheServer:
    folder.mkdir(parents=True, exist_ok=True)
    return CACHE_SERVERS[kind](folder).start()


class Partition:
    """A relay on a unix socket of its own in front of ``server``: a client given `url`
    reaches the server through it until `cut`, after which everything that client sends is
    read and dropped (no reply, no reset: its requests time out, as across a network that
    loses packets); `heal` forwards again on new connections. Other clients, connected to the
    server directly, are not affected."""

    def __init__(self, server: CacheServer) -> None:
        self.server = server
        self.path = server.folder / "partition.sock"
        self.path.unlink(missing_ok=True)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(self.path))
        self.listener.listen(64)
        self.cut_off = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self.accept, daemon=True).start()

    @property
    def url(self) -> str:
        return self.server.url_at(self.path)

    def cut(self) -> None:
        self.cut_off.set()

    def heal(self) -> None:
        """Forward again: connections made while cut stay dead (the client drops them on
        its timeout), new ones reach the server."""
        self.cut_off.clear()

    def accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            try:
                upstream.connect(str(self.server.socket))
            except OSError:
                client.close()  # the server is down: the client sees its connection end
                continue
            self.conns += [client, upstream]
            threading.Thread(target=self.pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(upstream, client, False), daemon=True).start()

    def pump(self, src: socket.socket, dst: socket.socket, outward: bool) -> None:
        dropping = False
        try:
            while data := src.recv(65536):
                dropping = dropping or (outward and self.cut_off.is_set())
                if not dropping:  # once a connection lost bytes, it never forwards again
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()
        for s in self.conns:
            s.close()
        self.path.unlink(missing_ok=True)

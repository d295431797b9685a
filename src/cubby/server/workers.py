"""`cubby serve --workers N`: one machine's cores for one server, despite the GIL.

A parent process binds the listening socket once and starts N worker processes that inherit
it; each worker is the ordinary server (`cubby.server.run.serve` on ``--fd``), and the kernel
hands each new connection to whichever worker accepts it first. The parent serves nothing
itself: it restarts a worker that dies (after a backoff that grows while workers keep dying
young, so a broken configuration does not spin the CPU) and, on SIGTERM or SIGINT, stops them
all and exits.

Why new interpreters (``python -m cubby.server.workers``) and not ``fork``: prometheus_client
chooses between in-process and multiprocess metric values when it is first imported, and the
parent has imported it already (through `cubby.server.app`); a forked child would keep the
in-process values and ``/metrics`` would count one worker only. A fresh interpreter started
with ``PROMETHEUS_MULTIPROC_DIR`` set writes its samples to that folder, and any worker's
``/metrics`` answers for all of them. The configuration reaches the child on its standard
input (pickled), not on its command line, where ``ps`` would show a database password.

What one process keeps in memory, N processes cannot share. The embedded default's in-process
metadata cache would serve each worker's own stale answers after another worker's write (a
folder just made, missing from every other listing), and its in-process broker would wake only
the long-polls of the worker that took the commit. So `for_workers` runs them uncached, unless
``--cache`` names a shared cache, and joins them by `cubby.notify.local` (datagram sockets in a
private folder the parent makes), unless ``--broker`` names Redis or NATS. Without a shared
cache the password throttles are each worker's own too (`cubby.server.throttle.opener`): a
guesser gets each worker's free attempts.

Workers are tied to the parent's life (Linux ``PR_SET_PDEATHSIG``): a parent killed with
SIGKILL does not leave orphans holding the port.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

from cubby.config import Config

MIN_BACKOFF = 0.5
MAX_BACKOFF = 30.0
HEALTHY_AFTER = 10.0
"""A worker that lived this long died of something else than its configuration: restart it
at once, without the backoff of a crash loop."""
STOP_GRACE = 10.0
"""Seconds the workers get to finish after SIGTERM (uvicorn gives long-polls 3) before SIGKILL."""


def bind(config: Config) -> socket.socket:
    """The socket every worker serves: the inherited one (``--fd``) or ``--host``/``--port``."""
    if config.listen_fd is not None:
        sock = socket.socket(fileno=config.listen_fd)
    else:
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((config.host, config.port))
    sock.listen(4096)
    sock.set_inheritable(True)
    return sock


def for_workers(config: Config, notify_folder: str) -> tuple[Config, list[str]]:
    """``config`` as the workers run it (see the module docstring), and a line for the log
    on each part replaced."""
    said: list[str] = []
    if config.cache_url == "memory":
        config = config.with_(cache_url="none")
        said.append("workers share no memory: metadata cache off (--cache redis://... or memcached://... for one)")
    if config.broker_url == "memory":
        config = config.with_(broker_url=f"local://{notify_folder}")
        said.append("workers are joined for notifications through local sockets (--broker for other machines)")
    return config, said


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM it when the parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM handler is all there is
        pass


@dataclass
class Slot:
    """One worker position: the process in it now, and how soon to refill it if it dies."""

    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = MIN_BACKOFF
    restart_at: float = 0.0


class Supervisor:
    """Starts, watches and stops the workers; `run` returns when they are all stopped."""

    def __init__(self, config: Config, roles: Sequence[str], count: int, *, log_level: str = "info") -> None:
        if count < 1:
            raise ValueError("--workers must be at least 1")
        self.config = config
        self.roles = tuple(roles)
        self.slots = [Slot() for _ in range(count)]
        self.log_level = log_level
        self.stopping = False
        self.sock: socket.socket | None = None
        self.metrics_dir = ""
        self.notify_dir = ""
        self.worker_config = config

    def spawn(self, slot: Slot) -> None:
        assert self.sock is not None
        fd = self.sock.fileno()
        for folder in (self.metrics_dir, self.notify_dir):
            # Made again if a tmp cleaner took it while the server ran (systemd-tmpfiles ages
            # out the temporary folder after 10 days on some distributions): a worker restarted
            # weeks later would find no folder for its metrics or its notification socket.
            if folder:
                os.makedirs(folder, mode=0o700, exist_ok=True)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.metrics_dir}
        proc = subprocess.Popen(
            [sys.executable, "-m", "cubby.server.workers"],
            stdin=subprocess.PIPE, env=env, pass_fds=(fd,), preexec_fn=_die_with_parent,
        )
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps((self.worker_config.with_(listen_fd=fd), self.roles, self.log_level)))
        proc.stdin.close()
        slot.proc, slot.started = proc, time.monotonic()

    def reap(self) -> None:
        """Notice dead workers and schedule (or do) their restart."""
        from prometheus_client import multiprocess

        now = time.monotonic()
        for slot in self.slots:
            if slot.proc is not None and slot.proc.poll() is not None:
                code, pid = slot.proc.returncode, slot.proc.pid
                multiprocess.mark_process_dead(pid, self.metrics_dir)
                slot.backoff = MIN_BACKOFF if now - slot.started >= HEALTHY_AFTER else min(slot.backoff * 2, MAX_BACKOFF)
                slot.restart_at = now + (0 if now - slot.started >= HEALTHY_AFTER else slot.backoff)
                print(f"cubby: worker {pid} exited ({code}); restarting", file=sys.stderr, flush=True)
                slot.proc = None
            if slot.proc is None and not self.stopping and now >= slot.restart_at:
                self.spawn(slot)

    def stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def run(self) -> None:
        self.sock = bind(self.config)
        self.metrics_dir = tempfile.mkdtemp(prefix="cubby-metrics-")
        self.notify_dir = tempfile.mkdtemp(prefix="cubby-notify-")  # mode 0700: this user's processes only
        self.worker_config, said = for_workers(self.config, self.notify_dir)
        for line in said:
            print(f"cubby: {line}", file=sys.stderr, flush=True)
        previous = {s: signal.signal(s, self.stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in self.slots:
                self.spawn(slot)
            from cubby.server.run import banner

            print(banner(self.worker_config.with_(listen_fd=self.sock.fileno()), self.roles), file=sys.stderr, flush=True)
            while not self.stopping:
                self.reap()
                time.sleep(0.1)
        finally:
            self.shutdown()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def shutdown(self) -> None:
        live = [s.proc for s in self.slots if s.proc is not None]
        for proc in live:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in live:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.sock is not None:
            self.sock.close()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        if self.notify_dir:
            shutil.rmtree(self.notify_dir, ignore_errors=True)


def serve_workers(config: Config, roles: Sequence[str], count: int, *, log_level: str = "info") -> None:
    print(f"cubby: starting {count} workers for {', '.join(roles)}", file=sys.stderr, flush=True)
    Supervisor(config, roles, count, log_level=log_level).run()


def worker_main() -> None:
    """A worker: read the configuration from standard input and serve on the inherited socket."""
    from cubby.server.run import serve

    config, roles, log_level = pickle.loads(sys.stdin.buffer.read())
    serve(config, roles, log_level=log_level, announce=False)


if __name__ == "__main__":
    worker_main()

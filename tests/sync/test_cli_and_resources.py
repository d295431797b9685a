"""`cubby sync` and `cubby status` as a person runs them: subprocesses against a real server.

The client's resource use (idle CPU, peak memory against file size) is measured in
`bench/resources.py`, not asserted here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from cubby.errors import CubbyError
from tests.helpers.live_server import ROOT
from tests.helpers.unprivileged import reachable_folder, with_permissions
from tests.sync.conftest import Clients, local_tree


def env_for(clients: Clients) -> dict[str, str]:
    return {**os.environ, "CUBBY_URL": clients.server.url, "CUBBY_TOKEN": clients.token, "PYTHONPATH": str(ROOT / "src")}


def cubby(clients: Clients, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cubby", *args], env=env_for(clients), capture_output=True, text=True, check=False)


def wait_for(cond, what: str, patience: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Liveness, not speed: wait (generously) for something that must happen."""
    end = time.monotonic() + patience
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def offline_lines(log: Path) -> int:
    """How many times the `cubby sync` writing ``log`` found the server away (a pass that ended
    ``offline ... retrying``)."""
    return sum(line.startswith("offline ") for line in log.read_text(errors="replace").splitlines()) if log.exists() else 0


@pytest.fixture
def running(clients: Clients, tmp_path: Path) -> Iterator[list[tuple[Path, subprocess.Popen[bytes]]]]:
    procs: list[tuple[Path, subprocess.Popen[bytes]]] = []

    def start(name: str) -> tuple[Path, subprocess.Popen[bytes]]:
        d = tmp_path / name
        d.mkdir()
        with open(tmp_path / f"{name}.log", "wb") as log:
            p = subprocess.Popen([sys.executable, "-m", "cubby", "sync", str(d)], env=env_for(clients), stdout=log, stderr=log)
        procs.append((d, p))
        return d, p

    start("one")
    start("two")
    yield procs
    for _, p in procs:
        p.terminate()
        p.wait(timeout=30)


def test_running_clients_follow_each_other_and_survive_an_outage(clients: Clients, running: list[tuple[Path, subprocess.Popen[bytes]]]) -> None:
    (one, _), (two, _) = running
    (one / "hello.txt").write_bytes(b"hello from one")
    wait_for(lambda: (two / "hello.txt").exists() and (two / "hello.txt").read_bytes() == b"hello from one", "file reaches two")
    (two / "folder").mkdir()
    (two / "folder" / "reply.txt").write_bytes(b"reply")
    wait_for(lambda: (one / "folder" / "reply.txt").exists(), "reply reaches one")
    (one / "hello.txt").rename(one / "folder" / "hello.txt")
    wait_for(lambda: local_tree(one) == local_tree(two), "trees agree after a move")
    assert sorted(local_tree(two)) == ["folder", "folder/hello.txt", "folder/reply.txt"]

    # the server goes away; an edit made meanwhile lands after it is back
    log = one.parent / "one.log"
    seen = offline_lines(log)
    clients.server.stop()
    try:
        (one / "offline.txt").write_bytes(b"written while the server was down")
        wait_for(lambda: offline_lines(log) > seen, "one finds the server away")
    finally:
        clients.server.start()
    wait_for(lambda: (two / "offline.txt").exists(), "the offline edit reaches two after reconnect")
    assert (two / "offline.txt").read_bytes() == b"written while the server was down"


def test_status_shows_pending_and_once_exits_zero_when_in_sync(clients: Clients, tmp_path: Path) -> None:
    d = tmp_path / "mine"
    r = cubby(clients, "sync", "--once", str(d))
    assert r.returncode == 0, r.stderr
    (d / "new.txt").write_bytes(b"pending")
    st = cubby(clients, "--json", "status", str(d))
    lines = [json.loads(x) for x in st.stdout.splitlines()]
    assert {"pending": "Upload", "path": "/new.txt"} in lines and lines[-1]["in_sync"] is False
    r = cubby(clients, "sync", "--once", "--json", str(d))
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout.splitlines()[-1])
    assert done["converged"] and done["applied"].get("Upload") == 1
    st = cubby(clients, "--json", "status", str(d))
    assert json.loads(st.stdout.splitlines()[-1])["in_sync"] is True


def test_bad_input_is_refused_with_a_code(clients: Clients, tmp_path: Path) -> None:
    d = tmp_path / "linked"
    assert cubby(clients, "sync", "--once", str(d)).returncode == 0
    other = clients.server.add_user(f"other{os.getpid()}{int(time.time() * 1000) % 100000}")
    r = subprocess.run([sys.executable, "-m", "cubby", "sync", "--once", str(d)],
                       env={**env_for(clients), "CUBBY_TOKEN": other}, capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "[linked_elsewhere]" in r.stderr
    st = cubby(clients, "status", str(tmp_path / "never-synced"))
    assert st.returncode != 0
    f = tmp_path / "a-file"
    f.write_bytes(b"x")
    assert cubby(clients, "sync", "--once", str(f)).returncode != 0


def test_a_linked_folder_starts_while_the_server_is_away(clients: Clients, tmp_path: Path) -> None:
    d = tmp_path / "laptop"
    assert cubby(clients, "sync", "--once", str(d)).returncode == 0
    clients.server.stop()
    try:
        with open(tmp_path / "offline.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "cubby", "sync", str(d)], env=env_for(clients), stdout=log, stderr=log)
        (d / "on-the-train.txt").write_bytes(b"written offline")
        wait_for(lambda: offline_lines(tmp_path / "offline.log") >= 2 or proc.poll() is not None, "two passes find the server away")
        assert proc.poll() is None, (tmp_path / "offline.log").read_text()
    finally:
        clients.server.start()
    try:
        def landed() -> bool:
            try:
                return b"".join(clients.api.download("/on-the-train.txt")) == b"written offline"
            except CubbyError:
                return False

        wait_for(landed, "the offline file reaches the server after reconnect")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def events_in(log: Path) -> list[dict[str, object]]:
    """The JSON events (``cubby --json sync``) written to ``log`` so far."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:  # a line being written
                pass
    return out


def test_sigterm_ends_the_daemon_while_it_retries_without_push(clients: Clients, tmp_path: Path) -> None:
    """SIGTERM while the server is away, the loop in its offline backoff and the change waiter
    in its push fallback: the daemon ends, with status 0 (the signal is a request to stop)."""
    d = tmp_path / "laptop"
    assert cubby(clients, "sync", "--once", str(d)).returncode == 0
    log_path = tmp_path / "daemon.log"
    clients.server.stop()
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "cubby", "--json", "sync", str(d)], env=env_for(clients), stdout=log, stderr=log)
        try:
            def retrying() -> bool:
                events = [e.get("event") for e in events_in(log_path)]
                return "push_unavailable" in events and events.count("offline") >= 3

            wait_for(retrying, "the daemon retries without push")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        clients.server.start()


def test_what_cannot_be_read_is_neither_deleted_nor_called_in_sync(clients: Clients) -> None:
    """A folder the client may not list and a file it may not open (root's override of file
    permissions taken away: `with_permissions`): unknown is not deleted. The server keeps the folder's files
    (a scan that read it as empty would delete them there and on every other device), the
    file's edit waits, `--once` says "not in sync" (exit 4) naming both, and `cubby status`
    lists them. Readable again, the edit goes up and the pass converges."""
    api = clients.api
    with reachable_folder() as base:
        seed = base / "seed"
        (seed / "docs" / "sub").mkdir(parents=True)
        (seed / "docs" / "a.txt").write_bytes(b"a")
        (seed / "docs" / "sub" / "b.txt").write_bytes(b"b")
        (seed / "top.txt").write_bytes(b"first")
        for local, remote in ((seed / "docs", "/docs"), (seed / "top.txt", "/top.txt")):
            assert cubby(clients, "put", str(local), remote).returncode == 0
        d = base / "mine"
        d.mkdir(mode=0o777)
        d.chmod(0o777)
        env = {**env_for(clients), "HOME": str(base), "XDG_CONFIG_HOME": str(base / "cfg")}

        def sync(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*with_permissions(), sys.executable, "-m", "cubby", *args], env=env, capture_output=True, text=True, check=False
            )

        first = sync("sync", "--once", str(d))
        assert first.returncode == 0, first.stderr
        assert (d / "docs" / "sub" / "b.txt").read_bytes() == b"b"
        (d / "top.txt").write_bytes(b"second")
        (d / "top.txt").chmod(0o000)
        (d / "docs").chmod(0o000)
        try:
            blind = sync("--json", "sync", "--once", str(d))
            status = sync("--json", "status", str(d))
        finally:
            (d / "docs").chmod(0o755)
            (d / "top.txt").chmod(0o644)
        assert blind.returncode == 4, blind.stderr
        done = json.loads(blind.stdout.splitlines()[-1])
        assert not done["converged"] and not done["applied"]
        assert {u["path"] for u in done["unreadable"]} == {"docs", "top.txt"}
        assert "unreadable: docs: Permission denied" in blind.stderr
        on_server = {e.path for e in api.list("/", recursive=True)}
        assert {"/docs/a.txt", "/docs/sub/b.txt"} <= on_server
        assert b"".join(api.download("/top.txt")) == b"first"
        lines = [json.loads(x) for x in status.stdout.splitlines()]
        assert {x["unreadable"] for x in lines if "unreadable" in x and isinstance(x["unreadable"], str)} == {"docs", "top.txt"}
        assert lines[-1]["in_sync"] is False and lines[-1]["unreadable"] == 2

        again = sync("--json", "sync", "--once", str(d))
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout.splitlines()[-1])["applied"].get("Upload") == 1
        assert {"/docs/a.txt", "/docs/sub/b.txt"} <= {e.path for e in api.list("/", recursive=True)}
        assert b"".join(api.download("/top.txt")) == b"second"


WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
print("writing", flush=True)
while True:
    os.write(fd, b"x")
"""
"""Appends to a file without a pause, until killed: every read of it overlaps a write."""

LOG_WRITER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
print("writing", flush=True)
while True:
    os.write(fd, b"a line of the log\\n")
    time.sleep(0.005)
"""
"""Appends a line to a file every few milliseconds, until killed, as a program writes its log."""


def test_a_file_changing_while_read_is_not_called_in_sync(clients: Clients, tmp_path: Path) -> None:
    """A file written to the whole time the pass reads it (64 MiB, appended to without a pause
    by another process) is left alone, as one being written should be, but `--once` must not
    then say "in sync" with the file on no server: it says "not in sync" (exit 4) and names it,
    and `cubby status` lists it. Once the writer stops, the next pass uploads it whole."""
    d = tmp_path / "mine"
    d.mkdir()
    first = cubby(clients, "sync", "--once", str(d))
    assert first.returncode == 0, first.stderr
    log = d / "growing.log"
    log.write_bytes(os.urandom(64 << 20))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        busy = cubby(clients, "--json", "sync", "--once", str(d))
        status = cubby(clients, "--json", "status", str(d))
    finally:
        writer.kill()
        writer.wait()
    assert busy.returncode == 4, busy.stderr
    done = json.loads(busy.stdout.splitlines()[-1])
    assert done["changing"] == ["growing.log"] and not done["converged"] and not done["failed"]
    assert "changing: growing.log" in busy.stderr
    assert "/growing.log" not in {e.path for e in clients.api.list("/", recursive=True)}
    lines = [json.loads(x) for x in status.stdout.splitlines()]
    assert [x["changing"] for x in lines if isinstance(x.get("changing"), str)] == ["growing.log"]
    assert lines[-1]["in_sync"] is False and lines[-1]["changing"] == 1

    settled = cubby(clients, "--json", "sync", "--once", str(d))
    assert settled.returncode == 0, settled.stderr
    report = json.loads(settled.stdout.splitlines()[-1])
    assert report["converged"] and report["changing"] == [] and report["applied"].get("Upload") == 1
    progress = [json.loads(x) for x in settled.stdout.splitlines() if '"progress"' in x]
    assert progress and all(p["path"] == "/growing.log" for p in progress)  # a large file's lines name it
    assert b"".join(clients.api.download("/growing.log")) == log.read_bytes()


def bytes_read_by(pid: int) -> int:
    """Bytes process ``pid`` has read so far, from the page cache or not (``rchar`` of
    /proc/PID/io): how a test sees from outside whether a daemon read a 64 MiB file again."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no rchar in /proc/{pid}/io")


def passes_in(out: Path) -> list[dict[str, object]]:
    """The ``{"event": "pass", ...}`` lines a daemon wrote to ``out`` so far."""
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.startswith("{")]
    return [x for x in lines if x.get("event") == "pass"]


@dataclass
class BusyLog:
    folder: Path
    log: Path
    writer: subprocess.Popen[str]
    daemon: subprocess.Popen[bytes]
    out: Path
    """Where the daemon writes its lines (`passes_in`)."""


@contextmanager
def daemon_beside_a_busy_log(clients: Clients, tmp_path: Path) -> Iterator[BusyLog]:
    """A folder with a 64 MiB log appended to every few milliseconds (`LOG_WRITER`), and
    `cubby --json sync` started on it once the writes have begun, so that every read of the log
    overlaps a write; handed over once a pass has found it changing. The writer is started
    first because a log written and then, a moment later, appended to may be read whole in
    between (a writer slow to start on a loaded machine), and go up, which is beside the
    point. The writer (if still going) and the daemon are stopped on the way out."""
    d = tmp_path / "mine"
    d.mkdir()
    log = d / "app.log"
    log.write_bytes(os.urandom(64 << 20))
    writer = subprocess.Popen([sys.executable, "-c", LOG_WRITER, str(log)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        out = tmp_path / "daemon.log"
        with open(out, "wb") as sink:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "cubby", "--json", "sync", str(d)], env=env_for(clients), stdout=sink, stderr=sink
            )
        try:
            wait_for(lambda: any(p.get("changing") == ["app.log"] for p in passes_in(out)), "a pass finds the log changing")
            yield BusyLog(d, log, writer, daemon, out)
        finally:
            daemon.terminate()
            daemon.wait(timeout=30)
    finally:
        writer.kill()
        writer.wait()


on_linux = pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="counts the daemon's reads in /proc/PID/io")


@on_linux
def test_a_file_saved_beside_a_log_being_written_goes_up_without_reading_the_log_again(clients: Clients, tmp_path: Path) -> None:
    """A 64 MiB log appended to without a pause is never stable, so it is left alone; a small
    document saved beside it must not wait for it. The daemon once held every pass after one
    that found the log changing until the folder had a second without events, ten seconds at
    most, and that pass read the whole log again only to find it changing: the document went
    up late, and only after another read of the log. Now the log's events wake no pass, the
    document's do at once, and that pass looks at the log with one stat.

    So, with the writer going until the test stops it: the document reaches the server while
    the log is still being written (the writer stops only after), and between saving it and
    its arrival the daemon read less than the log's size (the old hold's pass read all of it,
    whatever the machine's speed). No clock is read: a slow machine is only slower."""
    with daemon_beside_a_busy_log(clients, tmp_path) as busy:
        before = bytes_read_by(busy.daemon.pid)
        (busy.folder / "note.txt").write_bytes(b"saved beside the log")
        wait_for(lambda: "/note.txt" in {e.path for e in clients.api.list("/", recursive=True)}, "the note goes up")
        read = bytes_read_by(busy.daemon.pid) - before
        assert busy.writer.poll() is None, "the writer stopped: the note did not go up while the log was written"
    assert read < 64 << 20, f"the daemon read {read} bytes to send a 20-byte note: the log again"
    assert b"".join(clients.api.download("/note.txt")) == b"saved beside the log"


@on_linux
def test_a_file_being_written_is_read_again_once_the_writes_pause(clients: Clients, tmp_path: Path) -> None:
    """The running daemon, with a 64 MiB log appended to every few milliseconds: every write is
    an event, and a pass on each read the whole file again, only to find it changing (half a
    core, measured). Now the events of a file the last pass found changing wake no pass, and a
    pass that runs anyway looks at it with one stat (`cubby.client.sync.settling`): over four
    seconds of writing, at most one more pass runs (the one the writes during the first woke)
    and the daemon reads less than the log's size. Once the writes stop, the file goes up whole."""
    with daemon_beside_a_busy_log(clients, tmp_path) as busy:
        seen, before = len(passes_in(busy.out)), bytes_read_by(busy.daemon.pid)
        time.sleep(4)
        during, read = passes_in(busy.out)[seen:], bytes_read_by(busy.daemon.pid) - before
        busy.writer.kill()
        busy.writer.wait()
        assert len(during) <= 1, during
        assert read < 64 << 20, f"the daemon read {read} bytes while the log was written: the log again"
        size = busy.log.stat().st_size
        wait_for(
            lambda: any(e.path == "/app.log" and e.size == size for e in clients.api.list("/", recursive=True)),
            "the log goes up once the writes stop",
        )

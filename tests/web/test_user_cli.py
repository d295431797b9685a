"""`cubby user add --password-stdin` and `cubby user passwd`, run as commands."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
from pathlib import Path

from cubby.metadata.store import open_store

CUBBY = [sys.executable, "-m", "cubby"]


def run(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CUBBY, *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_add_with_password_then_passwd(tmp_path: Path) -> None:
    data = tmp_path / "d"
    p = run(["user", "add", "ivy", "--data", str(data), "--password-stdin"], "first password\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith("cby_")  # the API token still comes out
    store = open_store(f"sqlite:///{data / 'meta.db'}")
    try:
        assert store.accounts.verify("ivy", "first password") is not None
        uid = store.get_user("ivy").id
        _, secret = store.accounts.create_session(uid, "127.0.0.1", "test")
        p = run(["user", "passwd", "ivy", "--data", str(data), "--password-stdin"], "second password\n")
        assert p.returncode == 0, p.stderr
        assert store.accounts.verify("ivy", "first password") is None
        assert store.accounts.verify("ivy", "second password") is not None
        assert store.accounts.list_sessions(uid) == []  # a new password ends the old sessions
        del secret
    finally:
        store.close()


def test_bad_passwords_and_users_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "d"
    p = run(["user", "add", "joe", "--data", str(data), "--password-stdin"], "short\n")
    assert p.returncode != 0 and "8 to 1024 characters" in p.stderr + p.stdout
    p = run(["user", "passwd", "joe", "--data", str(data), "--password-stdin"], "long enough password\n")
    assert p.returncode != 0 and "no cubby server data" in p.stderr + p.stdout
    assert run(["user", "add", "joe", "--data", str(data)], "").returncode == 0
    p = run(["user", "passwd", "nobody", "--data", str(data), "--password-stdin"], "long enough password\n")
    assert p.returncode != 0 and "no user named 'nobody'" in p.stderr + p.stdout
    # Without --password-stdin and no terminal, it refuses instead of reading a pipe silently.
    p = run(["user", "passwd", "nobody", "--data", str(data)], "long enough password\n")
    assert p.returncode != 0 and "--password-stdin" in p.stderr + p.stdout


def _at_a_terminal(args: list[str], answers: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """Run cubby with a pseudo-terminal as its controlling terminal; answer each prompt that
    contains the first bytes of a pair with the second. Returns (exit status, all output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and /dev/tty are the terminal
        os.execv(sys.executable, [*CUBBY, *args])
    out = b""
    pending = list(answers)
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], 60)
            if not ready:
                raise AssertionError(f"cubby waits with no prompt answered; output so far: {out!r}")
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
            while pending and pending[0][0] in out:
                out = out.replace(pending[0][0], b"<" + pending[0][0] + b">", 1)
                os.write(fd, pending.pop(0)[1])
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_user_add_at_a_terminal_asks_for_an_optional_password(tmp_path: Path) -> None:
    data = tmp_path / "d"
    code, out = _at_a_terminal(
        ["user", "add", "kim", "--data", str(data)],
        [(b"Web password", b"typed at a terminal\n"), (b"Repeat", b"typed at a terminal\n")],
    )
    assert code == 0, out
    assert b"typed at a terminal" not in out  # hidden input
    code, out = _at_a_terminal(["user", "add", "lee", "--data", str(data)], [(b"Web password", b"\n"), (b"Repeat", b"\n")])
    assert code == 0, out
    store = open_store(f"sqlite:///{data / 'meta.db'}")
    try:
        assert store.accounts.verify("kim", "typed at a terminal") is not None
        assert store.get_user("lee").id  # created, with an API token only
        assert store.accounts.verify("lee", "") is None
    finally:
        store.close()

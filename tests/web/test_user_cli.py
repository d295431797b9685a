"""`cubby user add --password-stdin` and `cubby user passwd`, run as commands."""

from __future__ import annotations

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

"""Running a command where file permissions apply: as an unprivileged user when the tests run
as root (root reads every file whatever its mode), in folders that user can reach."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534


def as_nobody() -> list[str]:
    """A command prefix that runs the command as ``nobody`` (util-linux's ``setpriv``); none
    when the tests already run unprivileged."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@contextmanager
def reachable_folder() -> Iterator[Path]:
    """A new folder in the system's temporary folder that ``nobody`` can reach (pytest's own
    are private to the user running the tests), removed afterwards whatever modes were set
    inside it."""
    base = Path(tempfile.mkdtemp(prefix="cubby-perm-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for d in base.rglob("*"):
            if d.is_dir() and not d.is_symlink():
                d.chmod(0o755)
        shutil.rmtree(base)

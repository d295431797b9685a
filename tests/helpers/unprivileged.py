"""Running a command where file permissions apply, and folders to run it in.

Root reads and writes every file whatever its mode, so a test of what a command does with a
file it may not read needs root without that power: the capabilities that override file
permissions (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) taken out of its bounding set by
util-linux's ``setpriv``. It stays the same user, owning the files the test made, and can read
the checkout and its virtual environment wherever they are (a private temporary folder on CI),
as their owner; a mode of 000 shuts it out as it would anyone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def with_permissions() -> list[str]:
    """A command prefix under which file permissions apply to the command (none when the
    tests do not run as root: they apply already)."""
    if os.geteuid() != 0:
        return []
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]


@contextmanager
def reachable_folder() -> Iterator[Path]:
    """A new folder in the system's temporary folder, removed afterwards whatever modes the
    test set inside it."""
    base = Path(tempfile.mkdtemp(prefix="cubby-perm-"))
    try:
        yield base
    finally:
        for d in base.rglob("*"):
            if d.is_dir() and not d.is_symlink():
                d.chmod(0o755)
        shutil.rmtree(base)

"""File modes on the client: what of a local file's mode travels, and how it lands.

Three modes travel (`cubby.model.FILE_MODES`, spelled as git spells them): a regular file, an
executable one, and a symbolic link, whose content is its target. Other permission bits are
the receiving machine's business (its umask), as with git: an executable file lands with an
execute bit wherever it has a read bit.

A link is synced only when its target stays inside the synced folder (`link_inside`): a link
to ``/etc`` or ``../..`` means something else on every machine, and following one would sync
files that are not in the folder. Such links are reported and skipped, never followed.

The planner compares versions as opaque strings; `version` folds the mode into the content
hash, so that a mode change is a change like any other and a regular file's version is its
content hash alone (as it was before modes were kept).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cubby.model import EXECUTABLE, REGULAR, SYMLINK

__all__ = ["EXECUTABLE", "REGULAR", "SYMLINK", "apply_mode", "link_inside", "mode_of", "version"]


def mode_of(st: os.stat_result) -> int:
    """The travelling mode of a local file, from its ``lstat``."""
    if stat.S_ISLNK(st.st_mode):
        return SYMLINK
    return EXECUTABLE if st.st_mode & stat.S_IXUSR else REGULAR


def version(content_hash: str | None, mode: int | None) -> str | None:
    """What the planner compares: the content hash, and the mode when it is not regular."""
    if content_hash is None or mode in (None, REGULAR):
        return content_hash
    return f"{content_hash}:{mode:o}"


def apply_mode(path: Path | int, mode: int | None) -> None:
    """Give a regular file written here the execute bits of ``mode`` (where it has read bits);
    ``path`` may be a descriptor open on the file (a download's temp file)."""
    if mode == SYMLINK:
        return
    cur = stat.S_IMODE((os.fstat(path) if isinstance(path, int) else os.lstat(path)).st_mode)
    new = cur | ((cur & 0o444) >> 2) if mode == EXECUTABLE else cur & ~0o111
    if new != cur:
        os.chmod(path, new)


def link_inside(rel: str, target: str) -> bool:
    """Does a link at ``rel`` (relative to the synced folder) with ``target`` point inside the
    folder? Decided
    on the text alone (absolute targets are outside: the folder's place differs per machine),
    so it is the same answer on every client, whatever exists on disk."""
    if not target or os.path.isabs(target) or "\x00" in target:
        return False
    parts = rel.split("/")[:-1] + target.split("/")
    depth = 0
    for part in parts:
        if part in ("", "."):
            continue
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        else:
            depth += 1
    return True

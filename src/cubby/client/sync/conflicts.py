"""Names for the loser of a conflict: ``name (conflicted copy from HOST YYYY-MM-DD).ext``.

Pure, so that the planner can choose a name without touching the disk. The name must be free
under cubby's path rules (case-insensitive, NFC), not merely on the local disk, or the copy
would collide with another file on the server; ``taken`` answers by key.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable

from cubby.core import paths


def split_ext(name: str) -> tuple[str, str]:
    """``report.final.pdf`` -> (``report.final``, ``.pdf``); a leading dot is not an extension."""
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""
    return name[:dot], name[dot:]


def conflict_name(path: str, host: str, day: str, taken: Callable[[str], bool], *, folder: bool = False) -> str:
    """A free path beside ``path`` for its conflicted copy, numbered (2, 3, ...) when the plain
    one is taken. ``taken`` gets a path key. Folders keep their whole name (no extension)."""
    parent, name = paths.split(path)
    stem, ext = (name, "") if folder else split_ext(name)
    host = unicodedata.normalize("NFC", "".join(c for c in host if c.isprintable() and c not in "/\\")).strip() or "unknown"
    n = 1
    while True:
        suffix = f" (conflicted copy from {host} {day})" if n == 1 else f" (conflicted copy from {host} {day} {n})"
        candidate = paths.join(parent, paths.fit_name(stem, suffix, ext))
        if not taken(paths.key(candidate)):
            return candidate
        n += 1

"""Which local names are never synced: temporary and system files, and `.cubbyignore` patterns.

Applications write temporary files beside the ones a person saves (Office's ``~$doc.docx``,
vim's ``.doc.swp``, macOS's ``.DS_Store``); syncing them would spray half-written junk to every
other machine. The rules are pure (a name and its relative path in, a yes or no out) so that the
scanner and the watcher agree on them.

``.cubbyignore`` at the top of the synced folder holds one glob per line (``#`` comments);
a pattern without ``/`` matches a name at any depth, one with ``/`` matches the relative path
from the top; a trailing ``/`` matches folders only.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

STATE_DIR = ".cubby"
"""The client's own folder at the top of the synced folder (state database, temp files)."""

BUILTIN = (
    "*.tmp", "~$*", ".DS_Store", "Thumbs.db", "desktop.ini",
    ".*.swp", ".*.swo", ".*.swx", "*~", ".#*", "#*#", "4913", "*.cubby-part", "*.cubby-part.json",
)
"""Temporary and system files; ``4913`` is the probe file vim writes to test a folder."""

IGNORE_FILE = ".cubbyignore"

_BUILTIN_RE = re.compile("|".join(fnmatch.translate(p) for p in BUILTIN))
"""The built-in names as one expression: every name of a tree is tested on every scan."""


@dataclass(frozen=True)
class IgnoreRules:
    patterns: tuple[str, ...] = field(default=())

    @classmethod
    def load(cls, root: Path) -> IgnoreRules:
        try:
            text = (root / IGNORE_FILE).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return cls()
        return cls.parse(text.splitlines())

    @classmethod
    def parse(cls, lines: Iterable[str]) -> IgnoreRules:
        pats = []
        for line in lines:
            line = line.strip()
            if line and not line.startswith("#"):
                pats.append(line)
        return cls(tuple(pats))

    def ignored(self, rel: str, is_dir: bool) -> bool:
        """True when the item at ``rel`` (``/``-separated, relative to the synced folder) is not
        synced. The state folder at the top is always ignored, in any case (``.CUBBY``): on a
        case-insensitive disk that is the state folder, and nothing may sync into it."""
        name = rel.rsplit("/", 1)[-1]
        if "/" in rel:
            if rel.split("/", 1)[0].casefold() == STATE_DIR:
                return True
        elif len(rel) == len(STATE_DIR) and rel.casefold() == STATE_DIR:
            return True
        if not is_dir and _BUILTIN_RE.match(name):
            return True
        if not self.patterns:
            return False
        for p in self.patterns:
            dir_only = p.endswith("/")
            pat = p.rstrip("/")
            if dir_only and not is_dir:
                continue
            target = rel if "/" in pat else name
            if fnmatch.fnmatchcase(target, pat.lstrip("/")):
                return True
        return False

    def ignored_file(self, rel_dir: str, name: str) -> bool:
        """`ignored` of the file ``name`` in the folder at ``rel_dir``, for a folder that is
        itself synced (a scan tests each folder before it lists it): then only the name and
        the patterns are left to test. (A scan tests every file of the tree, and most trees
        have no patterns.)"""
        if not rel_dir and len(name) == len(STATE_DIR) and name.casefold() == STATE_DIR:
            return True
        if _BUILTIN_RE.match(name):
            return True
        return bool(self.patterns) and self.ignored(f"{rel_dir}/{name}" if rel_dir else name, False)

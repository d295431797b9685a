"""The folders `cubby sync` has linked on this machine, so that one that lost its state is not
taken for a new one.

Why. A synced folder keeps its state inside itself (``FOLDER/.cubby``). When the folder is on a
drive that is not mounted (at boot, before an encrypted home or a network share is up), its
path is an empty mount point; when it was renamed, `cubby sync` would make an empty folder at
the old path. Either way the folder has no state, and a first sync would begin: download the
whole account again, into the wrong disk or beside the real copy, as a new device. Dropbox asks
where the folder went; Syncthing refuses a folder without its marker. cubby remembers the
folders it linked (`KnownFolders`, a small JSON file in the user's state folder,
``$XDG_STATE_HOME/cubby/synced-folders.json``) and `cubby sync` refuses a known folder without
its state unless told ``--relink``.

Nothing here is trusted for safety on the server's side: a forgotten record (another user, a
wiped home) only means the old behaviour, a first sync that deletes nothing.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cubby.core import durable

FILE_NAME = "synced-folders.json"


def known_file(env: Mapping[str, str]) -> Path:
    """Where the record lives: ``$XDG_STATE_HOME/cubby``, else ``~/.local/state/cubby``."""
    base = env.get("XDG_STATE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".local", "state")
    return Path(base) / "cubby" / FILE_NAME


class KnownFolders:
    """The record of linked folders: absolute path -> the server it was linked to, and when."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # none yet, or unreadable: as if nothing was remembered (see the module)
        return data if isinstance(data, dict) else {}

    def was_linked(self, folder: Path) -> bool:
        return os.fspath(folder) in self._read()

    def remember(self, folder: Path, server: str) -> None:
        """Record ``folder`` (once: an unchanged record is not written again)."""
        data = self._read()
        key = os.fspath(folder)
        was = data.get(key)
        if isinstance(was, dict) and was.get("server") == server:
            return
        data[key] = {"server": server, "since": int(time.time())}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            durable.replace_file(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        except OSError:
            pass  # a home that cannot be written: the folder syncs all the same, unprotected


__all__ = ["FILE_NAME", "KnownFolders", "known_file"]

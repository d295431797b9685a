"""Local change events: watchdog (inotify, FSEvents, ReadDirectoryChangesW) turned into "these
paths changed" calls.

The engine does not trust events for *what* changed, only for *when* to look: it rescans (cheap,
because unchanged files are not re-hashed) and plans from the scan. So a lost or coalesced event
costs latency until the periodic full scan, never correctness. The paths serve one purpose: the
loop lets the events of a file still being written wake no pass (`cubby.client.sync.settling`),
so they are relative to the synced folder, as the scan names files. Events inside the client's
own state folder (temp files, the state database) are ignored, or every write of the engine
would wake it again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from cubby.client.sync.ignore import STATE_DIR

Notify = Callable[[tuple[str, ...], bool], None]
"""Told of one event: the relative paths it names ("" is the synced folder; a move names two),
and whether they are folders reported modified (watchdog's own event for a folder whose
entries were written to, besides theirs)."""


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Path, notify: Notify) -> None:
        self.top = str(root)
        self.state_dir = str(root / STATE_DIR)
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        rels: list[str] = []
        for p in (event.src_path, getattr(event, "dest_path", "") or ""):
            p = p.decode() if isinstance(p, bytes) else p
            if p and not (p == self.state_dir or p.startswith(self.state_dir + "/")):
                rels.append(self.relative(p))
        if rels:
            self.notify(tuple(rels), event.is_directory and event.event_type == "modified")

    def relative(self, path: str) -> str:
        """``path`` relative to the synced folder; as it is when it is not below it (a path
        no scan names, so that an event for it always wakes a pass)."""
        if path == self.top:
            return ""
        return path[len(self.top) + 1 :] if path.startswith(self.top + "/") else path


class Watcher:
    """Calls ``notify`` (from watchdog's thread) whenever something under ``root`` changes."""

    def __init__(self, root: Path, notify: Notify) -> None:
        self.observer = Observer()
        self.observer.schedule(_Handler(root, notify), str(root), recursive=True)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)

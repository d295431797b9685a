"""Local change events: watchdog (inotify, FSEvents, ReadDirectoryChangesW) turned into one
"something changed" signal.

The engine does not trust events for *what* changed, only for *when* to look: it rescans (cheap,
because unchanged files are not re-hashed) and plans from the scan. So a lost or coalesced event
costs latency until the periodic full scan, never correctness. Events inside the client's own
state folder (temp files, the state database) are ignored, or every write of the engine would
wake it again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from cubby.client.sync.ignore import STATE_DIR


class _Handler(FileSystemEventHandler):
    def __init__(self, root: Path, notify: Callable[[], None]) -> None:
        self.state_dir = str(root / STATE_DIR)
        self.notify = notify

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for p in (event.src_path, getattr(event, "dest_path", "") or ""):
            p = p.decode() if isinstance(p, bytes) else p
            if p and not (p == self.state_dir or p.startswith(self.state_dir + "/")):
                self.notify()
                return


class Watcher:
    """Calls ``notify`` (from watchdog's thread) whenever something under ``root`` changes."""

    def __init__(self, root: Path, notify: Callable[[], None]) -> None:
        self.observer = Observer()
        self.observer.schedule(_Handler(root, notify), str(root), recursive=True)

    def start(self) -> None:
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)

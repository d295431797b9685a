"""Whether a sync client gets push notifications, said out loud.

A client that cannot reach the notification role still syncs, by polling the journal heads
now and then, but every change from elsewhere then takes seconds to a minute instead of a
fraction of a second: a misrouted load balancer or a dead notify process must not look like
a working setup. `PushStatus` is told by the change waiter each time push works or fails; on
every change between the two it writes a line to the sync log (the ``emit`` stream of
``cubby sync`` and the ``cubby.sync`` logger) and the file ``.cubby/push.json`` beside the
state database, which ``cubby status`` reads (the sync process and ``status`` are two
processes). The file is written then renamed, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cubby.core import durable

log = logging.getLogger("cubby.sync")

FILE_NAME = "push.json"

PushReport = Callable[[bool, str], None]
"""``report(ok, detail)``: push worked (``ok``), or failed with ``detail`` saying why."""


class PushStatus:
    """Remembers the last state, and speaks only when it changes (a waiter reports on every
    wait; the log would otherwise repeat itself every few seconds)."""

    def __init__(self, state_dir: Path, emit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = state_dir / FILE_NAME
        self.emit = emit or (lambda obj: None)
        self.ok: bool | None = None
        self.lock = threading.Lock()

    def report(self, ok: bool, detail: str = "") -> None:
        with self.lock:
            if ok == self.ok:
                return
            self.ok = ok
            record = {"push": ok, "since": time.time(), "detail": detail}
            try:
                durable.replace_file(self.path, json.dumps(record).encode())  # whole, as `read` expects
            except OSError as exc:  # the folder went (the engine stops at its next scan): say it, go on
                log.warning("cannot record the push state in %s: %s", self.path.parent, exc.strerror or exc)
        if ok:
            log.info("push notifications work again")
            self.emit({"event": "push_restored"})
        else:
            log.warning("cannot reach the notification role (%s): polling for changes, still trying push", detail)
            self.emit({"event": "push_unavailable", "detail": detail})


def read(state_dir: Path) -> dict[str, Any] | None:
    """The last state a sync process recorded, or None when none did."""
    try:
        record: dict[str, Any] = json.loads((state_dir / FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record

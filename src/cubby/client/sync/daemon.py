"""Continuous sync: the loop (`SyncDaemon.run`) that wakes the engine for a pass.

A pass runs on every local event (the watcher), every remote change (a `ChangeWaiter` on its
own thread) and every ``full_scan_interval`` seconds as a safety net; while the server is away
passes back off with jitter (`Backoff`). Kept apart from the engine because when to run a pass
is a different job from what a pass does: the loop knows the engine only as a `PassRunner`.

One kind of event wakes nothing: a write to a file the last pass found still being written
(`PassReport.changing`). Such a file backs off alone (`cubby.client.sync.settling`): it is
looked at again once it has had no event for `QUIET` seconds, on a timer of this loop, while
every other change is synced at once, as when no file is changing.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cubby.client.changes import ChangeWaiter
from cubby.client.sync.base import PassReport
from cubby.client.sync.settling import Settling
from cubby.errors import CubbyError, Unavailable


class Backoff:
    """Exponential backoff with jitter, so that many clients do not retry in step."""

    def __init__(self, first: float = 0.5, cap: float = 30.0, rng: random.Random | None = None) -> None:
        self.first, self.cap, self.n = first, cap, 0
        self.rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.cap, self.first * (2 ** self.n)) * self.rng.uniform(0.5, 1.0)
        self.n = min(self.n + 1, 30)
        return delay

    def reset(self) -> None:
        self.n = 0


def wait_for_work(trigger: threading.Event, settling: Settling, delay: float) -> bool:
    """Block until the trigger is set (True: an event, a remote change or a stop request), or
    until ``delay`` seconds have gone by or a file being written has been quiet for `QUIET`
    (False: a pass that compares the disk first). The settling timer moves on with each event
    of its file, so this wakes at most once per `QUIET` while a log is written, and every
    wait blocks. Events that come meanwhile are not lost: the trigger is left set."""
    end = time.monotonic() + delay
    while True:
        now = time.monotonic()
        due = settling.due_in(now)
        timeout = end - now if due is None else min(end - now, due)
        if timeout <= 0:
            return False
        if trigger.wait(timeout):
            return True


class PassRunner(Protocol):
    """What the loop needs of an engine: a pass, its cursors, and the events it signals with."""

    root: Path
    trigger: threading.Event
    pass_done: threading.Condition
    started: int
    finished: int
    emit: Callable[[dict[str, Any]], None]

    def run_once(self, *, local_first: bool = False, stop: threading.Event | None = None) -> PassReport: ...

    def cursors(self) -> dict[int, int]: ...


class SyncDaemon:
    """Runs passes of one engine until told to stop (see the module docstring)."""

    def __init__(self, engine: PassRunner) -> None:
        self.engine = engine

    def run(
        self,
        stop: threading.Event,
        waiter: ChangeWaiter,
        *,
        watch: bool = True,
        full_scan_interval: float = 60.0,
        backoff: Backoff | None = None,
    ) -> None:
        """Sync until ``stop`` is set: a pass on every local event (watchdog) but those of
        files being written, every remote change (the waiter), every ``full_scan_interval``
        seconds as a safety net, and when a file being written has gone `QUIET` seconds
        without an event. While the server is away, passes back off exponentially with
        jitter; local changes wait on disk and are sent on reconnect. Nothing here spins:
        every wait blocks."""
        from cubby.client.sync.watcher import Watcher

        trigger = self.engine.trigger
        backoff = backoff or Backoff()
        settling = Settling()

        def changed(rels: tuple[str, ...], folders: bool) -> None:
            if not settling.touched(rels, time.monotonic(), folders=folders):
                trigger.set()

        watcher = Watcher(self.engine.root, changed) if watch else None
        if watcher:
            watcher.start()
        wt = threading.Thread(target=self._wait_remote, args=(stop, waiter, trigger), daemon=True, name="cubby-waiter")
        wt.start()
        woken = True
        try:
            while True:
                trigger.clear()
                # Looked at after the clear: a stop request sets stop, then the trigger, so
                # one that comes later still ends the wait below at once.
                if stop.is_set():
                    break
                try:
                    report = self.engine.run_once(local_first=not woken, stop=stop)
                    backoff.reset()
                    settling.found(report.changing, time.monotonic())
                    self.engine.emit({"event": "pass", **report.to_dict()})
                    delay = full_scan_interval
                except Unavailable as exc:
                    delay = backoff.next()
                    self.engine.emit({"event": "offline", "retry_in": round(delay, 2), "error": exc.message})
                    trigger.wait(delay)  # a local change or a stop request ends the pause early
                    continue
                woken = wait_for_work(trigger, settling, delay)
                if stop.is_set():
                    break
                stop.wait(0.05)  # let a burst of events settle into one pass
        finally:
            waiter.close()
            if watcher:
                watcher.stop()
            with self.engine.pass_done:
                self.engine.pass_done.notify_all()
            wt.join(timeout=5)

    def _wait_remote(self, stop: threading.Event, waiter: ChangeWaiter, trigger: threading.Event) -> None:
        backoff = Backoff()
        while not stop.is_set():
            try:
                changed = waiter.wait(self.engine.cursors(), 60.0)
                backoff.reset()
            except CubbyError:
                stop.wait(backoff.next())
                continue
            if changed and not stop.is_set():
                with self.engine.pass_done:
                    mark = self.engine.started
                trigger.set()
                with self.engine.pass_done:
                    # wait for a pass that started after the wake-up, so the cursors moved on
                    self.engine.pass_done.wait_for(lambda m=mark: self.engine.finished > m or stop.is_set(), timeout=120)  # type: ignore[misc]

"""Who owns a piece of multi-step work (an intent), and whether that owner is still there.

A cross-namespace move is several transactions; its intent row says what to finish or undo if
the process doing it dies. Recovery must never touch an intent whose owner is alive and simply
between two steps (a process starting up used to undo a live move of another process). So each
intent names its owner and carries a lease that the owner renews at every step:

- the owner is ``host/pid/start``: the machine, the process id, and the process's start time
  in clock ticks since boot (``/proc/PID/stat`` field 22), so a recycled pid is not taken for
  the owner;
- an intent is abandoned when its lease has run out, or at once when its owner ran on this
  machine and that process no longer exists (a crash on this host is recovered without waiting
  for the lease, which is what a restarted single-machine server needs).

An owner on another machine that is alive but stalled past its lease loses the intent; its next
step then finds the intent gone or changed and stops with a retryable error, never half-done.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

LEASE_SECONDS = 120.0
"""How long an owner may go between two steps before others take its intent for abandoned."""


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in ticks since boot, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    # Field 2 (the command name) may hold spaces and parentheses: split after its last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


@dataclass(frozen=True)
class Owner:
    """This process, as an intent's owner."""

    host: str
    pid: int
    start: str

    @classmethod
    def this_process(cls) -> Owner:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _start_ticks(pid) or "0")

    def __str__(self) -> str:
        return f"{self.host}/{self.pid}/{self.start}"

    def lease_until(self, now: float | None = None) -> float:
        return (time.time() if now is None else now) + LEASE_SECONDS

    def is_gone(self, owner: str | None, lease_until: float | None, now: float | None = None) -> bool:
        """Whether an intent owned by ``owner`` with this lease may be taken over."""
        now = time.time() if now is None else now
        if owner is None or lease_until is None or lease_until < now:
            return True  # no owner recorded (an older release wrote it), or the lease ran out
        host, _, rest = owner.partition("/")
        pid_text, _, start = rest.partition("/")
        if host != self.host or not pid_text.isdigit():
            return False  # another machine's process: only its lease can tell
        return _start_ticks(int(pid_text)) != start

"""The failure throttle's contract: what a key's failures lock, and how long.

A key (an account name, a client address, a public link) collects failed password guesses.
The rules, which every `Throttle` follows and ``tests/server/test_throttle_contract.py`` checks
on each implementation:

- **Window.** Failures count from a key's first failure for `Policy.window` seconds; a failure
  after that starts the count again at one (a fixed window, not a sliding one: a slow guesser
  gets ``free`` attempts per window, never more).
- **Lock.** The ``free``-th failure in a window locks the key for `Policy.first_delay` seconds,
  every further one for twice as long as the one before, at most `Policy.max_delay`
  (`Policy.delay`). `Throttle.retry_after` answers the whole seconds left (0: unlocked); the
  caller refuses a locked attempt *before* it hashes anything.
- **Admit** (`Throttle.admit`) is the check and a failure recorded in advance as one atomic
  step: a locked key answers its seconds left and records nothing; else one failure is
  recorded and the attempt may go on. Of any number of concurrent attempts, from any number of
  processes, no more pass than the key's free attempts allow.
- **Success** (`Throttle.succeeded`) forgets the key: failures and lock.
- **Forgive** (`Throttle.forgive`) takes back one failure that was recorded in advance (before
  the password was checked, so that concurrent guesses cannot all pass the gate before the
  first one counts) once the guess proved right, and lifts the lock: the attempt was let in,
  so no lock held before its own failure was recorded. It clears nothing else (a right password
  for one link must not wipe an address's failures on another).
- **Shared state is atomic.** An implementation that several processes share (Redis,
  memcached) applies each change as one atomic step on the server, so concurrent failures from
  any number of processes are all counted and the free attempts are shared, not multiplied.
- **Failures of the store.** The in-process implementation never fails. A shared one raises
  `ThrottleUnavailable` when its server cannot be reached or does not answer within its
  timeout (bounded: a login must never hang on it); `cubby.server.throttle.fallback` decides
  what the server then does.

The transitions are pure functions of a `Record` (`after_failure`, `after_forgive`) so that the
in-process and memcached implementations share them; the Redis one runs the same rules as a Lua
script, and the contract tests hold all three to one behaviour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cubby.cache.base import digest
from cubby.errors import Unavailable

KEY_PREFIX = "thr:"
"""Before every key the throttle keeps in a shared cache, beside the metadata cache's own."""
MAX_DOUBLINGS = 64
"""The delay stops doubling here: ``2.0 ** n`` overflows a float past 1023, and `Policy.max_delay`
caps it long before this anyway."""


class ThrottleUnavailable(Unavailable):
    """The shared throttle state could not be read or changed (its server is down, cut off, or
    too slow); nothing is known about whether a change was applied."""

    code = "throttle_unavailable"


@dataclass(frozen=True, slots=True)
class Policy:
    """How many failures a key gets for free, and how long it is locked after that."""

    free: int
    first_delay: float = 10.0
    window: float = 900.0
    max_delay: float = 900.0

    def delay(self, failures: int) -> float:
        """Seconds a key is locked for by its ``failures``-th failure in a window (0: none)."""
        if failures < self.free:
            return 0.0
        return min(self.max_delay, self.first_delay * 2.0 ** min(failures - self.free, MAX_DOUBLINGS))


@dataclass(frozen=True, slots=True)
class Record:
    """What a throttle knows about one key: failures in the window that began at ``first``,
    and the moment the key unlocks (0: not locked). Times are the throttle's clock."""

    failures: int
    first: float
    locked_until: float

    def encode(self) -> bytes:
        """The record as a shared store keeps it: ASCII, ``failures first locked_until``."""
        return f"{self.failures} {self.first!r} {self.locked_until!r}".encode()

    @classmethod
    def decode(cls, raw: bytes) -> Record:
        failures, first, until = raw.split()
        return cls(int(failures), float(first), float(until))

    def lifetime(self, now: float, policy: Policy) -> float:
        """Seconds a store must keep this record: until both its window and its lock are over
        (afterwards it changes nothing, and a store may forget it)."""
        return max(self.first + policy.window, self.locked_until) - now


def after_failure(rec: Record | None, now: float, policy: Policy) -> Record:
    """``rec`` with one more failure at ``now`` (a new window if its own is over)."""
    if rec is None or rec.failures <= 0 or now - rec.first > policy.window:
        rec = Record(0, now, 0.0)
    failures = rec.failures + 1
    delay = policy.delay(failures)
    return Record(failures, rec.first, now + delay if delay else rec.locked_until)


def admitted(rec: Record | None, now: float, policy: Policy) -> tuple[int, Record | None]:
    """`Throttle.admit` on ``rec``: (seconds left, nothing to store) if it is locked at ``now``,
    else (0, the record after one more failure)."""
    wait = 0 if rec is None else seconds_left(rec.locked_until, now)
    return (wait, None) if wait else (0, after_failure(rec, now, policy))


def after_forgive(rec: Record) -> Record:
    """``rec`` with one failure taken back and no lock (see the module docstring); a record of
    no failures is as good as none, and a store may delete it."""
    return Record(rec.failures - 1, rec.first, 0.0)


def seconds_left(locked_until: float, now: float) -> int:
    """Whole seconds until ``locked_until`` (0 once it is past), as ``Retry-After`` wants them."""
    wait = locked_until - now
    return math.ceil(wait) if wait > 0 else 0


def shared_key(name: str, key: str) -> str:
    """The key under which a shared store keeps throttle ``name``'s record of ``key``:
    ``thr:NAME:HASH``. The caller's key is hashed: it may hold an account name, an address or a
    link's id, which do not belong in plain sight in a cache, and memcached keys may not hold
    spaces or control characters or exceed 250 bytes. The hash is not a secret's protection
    (an account name is easy to guess and hash); it keeps keys short, safe and uniform."""
    return f"{KEY_PREFIX}{name}:{digest(key)}"


class Throttle(Protocol):
    """Failed attempts per key, and the lock they earn (the module docstring is the contract).

    Blocking: a shared implementation talks to its server, so the server calls these off its
    event loop (`cubby.server.context.ServerContext.in_thread`)."""

    def retry_after(self, key: str) -> int:
        """Whole seconds until ``key`` may try again (0: now)."""
        ...

    def failed(self, key: str) -> None:
        """Record one failure of ``key`` (which may lock it)."""
        ...

    def admit(self, key: str) -> int:
        """If ``key`` is locked, the whole seconds left, and nothing recorded; else record one
        failure in advance (`forgive` takes it back if the guess proves right) and answer 0."""
        ...

    def succeeded(self, key: str) -> None:
        """Forget ``key``: its failures and its lock."""
        ...

    def forgive(self, key: str) -> None:
        """Take back one failure of ``key`` recorded in advance, and lift its lock."""
        ...


def admit_all(keys: Sequence[tuple[Throttle, str]]) -> int:
    """`Throttle.admit` of one attempt under each ``(throttle, key)`` in turn (an account and an
    address, say): the first that is locked answers its seconds left, and those already let in
    get their failure back (`Throttle.forgive`), so a refused attempt records nothing; 0 when
    every key let it in."""
    admitted: list[tuple[Throttle, str]] = []
    for throttle, key in keys:
        wait = throttle.admit(key)
        if wait:
            forgive_all(admitted)
            return wait
        admitted.append((throttle, key))
    return 0


def forgive_all(keys: Sequence[tuple[Throttle, str]]) -> None:
    """`Throttle.forgive` under each ``(throttle, key)``: an attempt `admit_all` let in proved right."""
    for throttle, key in keys:
        throttle.forgive(key)

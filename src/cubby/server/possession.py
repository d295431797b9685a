"""Padding prove answers so that their time does not say which claimed chunks the server holds.

`cubby.metadata.possession.check_claims` already hashes the same number of bytes for a held
chunk and an absent one. What it cannot equalise is time: a held chunk is fetched from the
block store (disk, decompression, verification: milliseconds for 4 MiB, and it depends on the
store: local packs or S3), an absent one costs nothing; and hashing fresh bytes is slower than
hashing filler that stays in the CPU's cache. Reading filler from disk would not match either
(another file, another cache state, another codec). So instead the answer is padded: each
request gets a *budget*, and the handler sleeps for the budget minus the time the check took
(counted from before it was handed to its thread). A held and an absent chunk then take the
same time whenever the check fits in the budget. The sleep is on the event loop but for its
last milliseconds (below): it holds no thread and no CPU. What it costs honest clients: a
proof of chunks the server lacks (a new upload) takes about as long as a proof of held ones
would.

A request's budget is ``max(first, sum(base + rate * size))`` over its claims:

- ``first``, the least any request gets: the fixed cost of reaching the store at all, which
  a large request's claims spread over many bytes (the learnt ``rate`` holds it, amortised,
  and a budget already above ``first`` is left as it is) but a request of one small claim
  pays whole. On object storage it is a ranged GET: measured with moto, a wrong proof of one
  held 4 KiB chunk answered 8 ms later than one of an absent chunk (`bench/prove_timing.py
  --blocks moto`) while budgets had no such floor. Its default is the store's (`first_for`:
  1 ms for a local folder, a read from a cold SSD; 100 ms for object storage);
- ``base``, per claim: one ranged read, decompression and verification of a small chunk. The
  claims of one request are read in one batch (`BlockStore.get_many`: one index lookup, which
  held and absent claims pay alike and which is inside the measured time, then a read per
  held chunk or run of neighbours). Its default, 150 us: a batch of 1,000 held 4 KiB chunks
  from a pack read in 130-160 ms on the 2-core test machine at load 7, the lookup alone in
  30-40 ms when none was held (it was 0.5 ms while each claim was its own index query, which
  made a prove of 1,000 new small chunks take four seconds);
- ``rate``, per byte: the read and hashing of large chunks (`DEFAULT_RATE` until learnt).

Each is learnt from the checks themselves, from the batches it dominates (every claim held):
a high percentile (p90) of recent samples, times a margin, so that budgets follow whatever
block store is configured and how loaded the machine is, without configuration. ``first``
from batches of a few small claims (their seconds), ``base`` from batches of many small
claims (seconds per claim), ``rate`` from batches of large ones (seconds per byte). Each is
one number for the whole server, fed by every batch of held reads (accepted proofs too), so
it says nothing about any one chunk. ``first`` and ``base`` are never below their defaults:
learning only raises them, since honest clients' reads can be cheaper than the ones a prober
picks (neighbours in one pack, read as one extent, against chunks scattered over cold packs).
``rate`` may fall below its default, as before: a 4 MiB read was the case it was made for.

The deadline is kept to well under a millisecond. An event loop's timers are not that fine
(epoll and libuv wait in whole milliseconds from the moment they are called, rounded up), so
a sleep on the loop alone ends at the same whole millisecond after the held check's longer
work as after the absent one's shorter work, and the difference showed through untouched
(0.1-0.3 ms, `bench/prove_timing.py`). So the loop sleeps all but the last `FINE` seconds,
and a thread sleeps the rest to the deadline (``time.sleep``: microseconds).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

DEFAULT_RATE = 5e-9
"""Seconds per byte of a held read before enough reads were seen (measured: 4 MiB from the
local folder store in 17 ms, about 4.2 ns per byte, on the 2-core test machine)."""
LOCAL_FIRST = 0.001
"""Default ``first`` of a local folder store: one read from a cold SSD, with room."""
REMOTE_FIRST = 0.1
"""Default ``first`` of an object store: a ranged GET. 4-8 ms from moto on loopback; from Ceph
RGW on loopback a small one took 7-14 ms, or 48-56 ms in runs of requests that met the
kernel's 40 ms delayed ACK (`bench/prove_timing.py`, 2026-12-06); tens of ms from a remote
S3 at its p90."""
FINE = 0.002
"""The end of a pad slept on a thread, to the deadline, rather than on the event loop (whose
timers are whole milliseconds): at most this long a thread is held per prove answer."""
FEW_CLAIMS = 4
"""A batch of at most this many small claims teaches ``first``."""
MANY_CLAIMS = 32
"""A batch of at least this many small claims teaches ``base``."""

Read = tuple[int, int, float]
"""An all-held batch a check read: (claims, bytes, seconds)."""


def _sleep_until(deadline: float) -> None:
    left = deadline - time.perf_counter()
    if left > 0:
        time.sleep(left)


async def finish_on_thread(deadline: float) -> None:
    """Sleep to ``deadline`` (`time.perf_counter`) on a worker thread: finer than the loop."""
    await asyncio.to_thread(_sleep_until, deadline)


def first_for(remote: bool) -> float:
    """The default ``first`` of a block store: `REMOTE_FIRST` for object storage, else `LOCAL_FIRST`."""
    return REMOTE_FIRST if remote else LOCAL_FIRST


class _Samples:
    """The last ``window`` samples of one part of the budget, and their p90."""

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque(maxlen=window)

    def p90(self, min_samples: int) -> float | None:
        ordered = sorted(self.values)
        if len(ordered) < min_samples:
            return None
        return ordered[int(0.9 * (len(ordered) - 1))]


class RejectPacer:
    """Learns what reading held chunks costs and pads prove answers to that budget.

    Thread-safe: `record` is called from worker threads, `pad` on the event loop."""

    def __init__(
        self,
        *,
        first_seconds: float = LOCAL_FIRST,
        base_seconds: float = 0.00015,
        default_rate: float = DEFAULT_RATE,
        margin: float = 1.25,
        window: int = 128,
        min_samples: int = 8,
        min_sample_bytes: int = 64 * 1024,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        finish: Callable[[float], Awaitable[None]] = finish_on_thread,
    ) -> None:
        self.first_seconds = first_seconds
        self.base_seconds = base_seconds
        self.default_rate = default_rate
        self.margin = margin
        self.min_samples = min_samples
        self.min_sample_bytes = min_sample_bytes
        """A claim of at least this size is large (teaches ``rate``); below it, small."""
        self._first = _Samples(window)
        self._base = _Samples(window)
        self._rates = _Samples(window)
        self._lock = threading.Lock()
        self._sleep = sleep
        self._finish = finish

    def record(self, reads: Iterable[Read]) -> None:
        """Remember all-held batches, (claims, bytes, seconds), each as a sample of the part
        of the budget it says most about (`RejectPacer` above); a batch of middling size is
        a clear sample of none, and is left out."""
        with self._lock:
            for claims, size, seconds in reads:
                if claims <= 0:
                    continue
                if size >= self.min_sample_bytes * claims:
                    self._rates.values.append(seconds / size)
                elif claims <= FEW_CLAIMS and size < self.min_sample_bytes:
                    self._first.values.append(seconds)
                elif claims >= MANY_CLAIMS:
                    self._base.values.append(seconds / claims)

    def _learnt(self, samples: _Samples) -> float | None:
        with self._lock:
            p90 = samples.p90(self.min_samples)
        return None if p90 is None else p90 * self.margin

    def first(self) -> float:
        """Seconds any request may spend, however little it claims (reaching the store)."""
        return max(self.first_seconds, self._learnt(self._first) or 0.0)

    def base(self) -> float:
        """Seconds each claim may spend beyond its bytes."""
        return max(self.base_seconds, self._learnt(self._base) or 0.0)

    def rate(self) -> float:
        learnt = self._learnt(self._rates)
        return self.default_rate * self.margin if learnt is None else learnt

    def budget(self, sizes: Iterable[int]) -> float:
        """Seconds a request claiming chunks of these sizes may spend reading."""
        rate, base = self.rate(), self.base()
        return max(self.first(), sum(base + rate * n for n in sizes))

    async def pad(self, sizes: Iterable[int], reads: Iterable[Read], spent: float | None = None) -> float:
        """Sleep for the budget of ``sizes`` minus the ``spent`` seconds (by default the
        ``reads``' own), the last `FINE` of it on a thread, to the deadline; learn from the
        ``reads``; return the sleep."""
        reads = list(reads)
        rest = self.budget(sizes) - (sum(s for _, _, s in reads) if spent is None else spent)
        deadline = time.perf_counter() + rest
        self.record(reads)
        if rest > 0:
            if rest > FINE:
                await self._sleep(rest - FINE)
            await self._finish(deadline)
        return max(0.0, rest)


__all__ = [
    "DEFAULT_RATE", "FEW_CLAIMS", "FINE", "LOCAL_FIRST", "MANY_CLAIMS", "REMOTE_FIRST", "Read", "RejectPacer",
    "finish_on_thread", "first_for",
]

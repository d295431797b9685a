"""Padding prove answers so that their time does not say which claimed chunks the server holds.

`cubby.metadata.possession.check_claims` already hashes the same number of bytes for a held
chunk and an absent one. What it cannot equalise is time: a held chunk is fetched from the
block store (disk, decompression, verification: milliseconds for 4 MiB, and it depends on the
store: local packs or S3), an absent one costs nothing; and hashing fresh bytes is slower than
hashing filler that stays in the CPU's cache. Reading filler from disk would not match either
(another file, another cache state, another codec). So instead the answer is padded: each
claim gets a *budget* of ``base + rate * size``, and the handler sleeps for the budget minus
the time actually spent reading and hashing. A held and an absent chunk then take the same
time whenever the check fits in the budget.

The claims of one request are read in one batch (`BlockStore.get_many`: one index lookup,
which held and absent claims pay alike and which is inside the measured time, then a ranged
read per held chunk), so the fixed part of a claim's budget only has to cover one ranged read,
decompression and verification of a small chunk: ``base_seconds``, 150 us (a batch of 1,000
held 4 KiB chunks from a pack reads in 130-160 ms on the 2-core test machine at load 7, its
lookup alone in 30-40 ms when none is held), until the learnt rate takes over. It was 0.5 ms
while each claim was its own index query (3.3 ms each at that load), which made a prove of
1,000 new small chunks take four seconds.

The rate is learnt from the checks themselves: a high percentile (p90) of recent held checks'
seconds per byte (read and hashing), times a margin, so it follows whatever block store is configured and how loaded the
machine is, without configuration. It is one number for the whole server, fed by every batch of
held reads (accepted proofs too), so it says nothing about any one chunk. The sleep is on the event
loop: it holds no thread and no CPU. What it costs honest clients: a proof of chunks the server
lacks (a new upload) takes about as long as a proof of held ones did before.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

DEFAULT_RATE = 5e-9
"""Seconds per byte of a held read before enough reads were seen (measured: 4 MiB from the
local folder store in 17 ms, about 4.2 ns per byte, on the 2-core test machine)."""


class RejectPacer:
    """Learns what reading a held chunk costs and pads prove answers to that budget.

    Thread-safe: `record` is called from worker threads, `pad` on the event loop."""

    def __init__(
        self,
        *,
        base_seconds: float = 0.00015,
        default_rate: float = DEFAULT_RATE,
        margin: float = 1.25,
        window: int = 128,
        min_samples: int = 8,
        min_sample_bytes: int = 64 * 1024,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.base_seconds = base_seconds
        self.default_rate = default_rate
        self.margin = margin
        self.min_samples = min_samples
        self.min_sample_bytes = min_sample_bytes
        self._rates: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._sleep = sleep

    def record(self, reads: Iterable[tuple[int, float]]) -> None:
        """Remember (size, seconds) of held reads. Small reads are skipped: their cost is the
        fixed part (``base_seconds``), and per byte they would inflate the rate."""
        with self._lock:
            self._rates.extend(s / n for n, s in reads if n >= self.min_sample_bytes)

    def rate(self) -> float:
        with self._lock:
            rates = sorted(self._rates)
        if len(rates) < self.min_samples:
            return self.default_rate * self.margin
        return rates[int(0.9 * (len(rates) - 1))] * self.margin

    def budget(self, sizes: Iterable[int]) -> float:
        """Seconds a request claiming chunks of these sizes may spend reading."""
        rate = self.rate()
        return sum(self.base_seconds + rate * n for n in sizes)

    async def pad(
        self, sizes: Iterable[int], reads: Iterable[tuple[int, float]], spent: float | None = None
    ) -> float:
        """Sleep for the budget of ``sizes`` minus the ``spent`` seconds (by default the
        ``reads``' own); learn from the ``reads``; return the sleep."""
        reads = list(reads)
        rest = self.budget(sizes) - (sum(s for _, s in reads) if spent is None else spent)
        self.record(reads)
        if rest > 0:
            await self._sleep(rest)
        return max(0.0, rest)


__all__ = ["DEFAULT_RATE", "RejectPacer"]

"""The password gate of public links: throttled guesses, and scrypt on a pool of its own.

A link password may be weak, so guessing it must be slow and must not hurt anybody else:

- **Throttled** per link and per client address (`FailureThrottle`): an attempt takes a token
  from both buckets before the hash runs and gets it back if the password was right. An empty
  bucket answers 429 with ``Retry-After`` without hashing anything. The per-address bucket is
  the smaller one, so a guesser is stopped long before the link's own bucket runs dry and its
  rightful users, from other addresses, still get in. The address is the one
  `cubby.server.peers` vouches for (``X-Forwarded-For`` only from trusted proxies).
- **Hashed on a small pool** (one thread per two cores): scrypt costs ~16 MiB and tens of
  milliseconds, and on the server's shared thread pool 64 guessers starved every other request.
  At most ``max_waiting`` checks wait for the pool; beyond that the answer is 429 at once.
"""

from __future__ import annotations

import asyncio
import enum
import math
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cubby.server.peers import TrustedProxies, scope_client_address
from cubby.server.throttle import FailureThrottle, address_key

ADDRESS_BURST, ADDRESS_REFILL = 10, 6.0
"""A client address may miss 10 passwords in a row, then one every 6 seconds (10 a minute)."""
LINK_BURST, LINK_REFILL = 60, 2.0
"""A link takes 60 misses in a row from everybody together, then one every 2 seconds."""


class Outcome(enum.Enum):
    RIGHT = "right"
    WRONG = "wrong"
    THROTTLED = "throttled"
    BUSY = "busy"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    retry_after: int = 0
    """Whole seconds to wait, for THROTTLED and BUSY."""


class PasswordGate:
    """Checks link passwords for the public routes; one per server, closed with it."""

    def __init__(
        self,
        trusted: TrustedProxies,
        check: Callable[[str, str], bool],
        *,
        per_address: FailureThrottle | None = None,
        per_link: FailureThrottle | None = None,
        workers: int | None = None,
        max_waiting: int = 16,
    ) -> None:
        self.trusted = trusted
        self.check = check
        self.per_address = per_address or FailureThrottle(ADDRESS_BURST, ADDRESS_REFILL)
        self.per_link = per_link or FailureThrottle(LINK_BURST, LINK_REFILL)
        self.max_waiting = max_waiting
        self.waiting = 0
        self.pool = ThreadPoolExecutor(
            max_workers=workers or max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="cubby-scrypt"
        )

    async def attempt(self, scope: Mapping[str, object], link_id: str, given: str, stored: str) -> Verdict:
        """Whether ``given`` is the password whose hash is ``stored``, within the limits."""
        addr = "addr:" + address_key(scope_client_address(scope, self.trusted))
        link = "link:" + link_id
        wait = max(self.per_address.wait(addr), self.per_link.wait(link))
        if wait > 0:
            return Verdict(Outcome.THROTTLED, max(1, math.ceil(wait)))
        if self.waiting >= self.max_waiting:
            return Verdict(Outcome.BUSY, 1)
        self.per_address.take(addr)
        self.per_link.take(link)
        self.waiting += 1
        try:
            right = await asyncio.get_running_loop().run_in_executor(self.pool, self.check, given, stored)
        finally:
            self.waiting -= 1
        if right:
            self.per_address.give_back(addr)
            self.per_link.give_back(link)
            return Verdict(Outcome.RIGHT)
        return Verdict(Outcome.WRONG)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["Outcome", "PasswordGate", "Verdict"]

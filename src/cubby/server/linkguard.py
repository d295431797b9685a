"""The password gate of public links: throttled guesses, and scrypt on a pool of its own.

A link password may be weak, so guessing it must be slow and must not hurt anybody else:

- **Throttled** per link and per client address (`cubby.server.throttle.memory.FailureThrottle`,
  the one the login uses): an attempt is recorded as a failure under both keys *before* the hash
  runs, and forgiven if the password was right, so 64 concurrent guesses cannot all pass the
  gate before the first failure counts. A locked key answers 429 with ``Retry-After`` without
  hashing anything. The address allows fewer failures than the link, so a guesser is stopped
  long before the link locks and its rightful users, from other addresses, still get in. The
  address is the one `cubby.server.peers` vouches for (``X-Forwarded-For`` only from trusted
  proxies), and an IPv6 address counts by its /64.
- **Hashed on a small pool** (one thread per two cores): scrypt costs ~16 MiB and tens of
  milliseconds, and on the server's shared thread pool 64 guessers starved every other request.
  At most ``max_waiting`` checks wait for the pool; beyond that the answer is 429 at once.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cubby.server.peers import TrustedProxies, scope_client_address
from cubby.server.throttle import FailureThrottle, Policy

ADDRESS_FREE = 10
"""Wrong link passwords from one client address (within 15 minutes) before it is locked out:
10 s, doubled with every further miss, up to 15 minutes."""
LINK_FREE = 60
"""Wrong passwords for one link, from everybody together, before the link is locked the same way."""


def address_key(address: str) -> str:
    """The throttling key of a client address: the address itself for IPv4, its /64 for IPv6
    (one host usually holds a whole /64, so per-address keys there would cost it nothing)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


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
        self.per_address = per_address or FailureThrottle(Policy(free=ADDRESS_FREE))
        self.per_link = per_link or FailureThrottle(Policy(free=LINK_FREE))
        self.max_waiting = max_waiting
        self.waiting = 0
        self.pool = ThreadPoolExecutor(
            max_workers=workers or max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="cubby-scrypt"
        )

    async def attempt(self, scope: Mapping[str, object], link_id: str, given: str, stored: str) -> Verdict:
        """Whether ``given`` is the password whose hash is ``stored``, within the limits."""
        addr = "addr:" + address_key(scope_client_address(scope, self.trusted))
        link = "link:" + link_id
        wait = max(self.per_address.retry_after(addr), self.per_link.retry_after(link))
        if wait > 0:
            return Verdict(Outcome.THROTTLED, wait)
        if self.waiting >= self.max_waiting:
            return Verdict(Outcome.BUSY, 1)
        self.per_address.failed(addr)
        self.per_link.failed(link)
        self.waiting += 1
        try:
            right = await asyncio.get_running_loop().run_in_executor(self.pool, self.check, given, stored)
        finally:
            self.waiting -= 1
        if right:
            self.per_address.forgive(addr)
            self.per_link.forgive(link)
            return Verdict(Outcome.RIGHT)
        return Verdict(Outcome.WRONG)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["Outcome", "PasswordGate", "Verdict", "address_key"]

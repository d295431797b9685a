"""The password gate of public links: throttled guesses, and scrypt on a pool of its own.

A link password may be weak, so guessing it must be slow and must not hurt anybody else:

- **Throttled** per link and per client address (`cubby.server.throttle`, as the login is):
  an attempt is recorded as a failure under both keys *before* the hash runs, in the same
  atomic step as the check (`Throttle.admit`), and forgiven if the password was right, so 64
  concurrent guesses cannot all pass the gate before the first failure counts, whichever
  processes they reach: with a shared cache the counts are the deployment's, not each
  process's. A locked key answers 429 with ``Retry-After`` without hashing anything. The address allows fewer failures than the link, so a guesser is stopped
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
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cubby.server.peers import TrustedProxies, scope_client_address
from cubby.server.throttle.base import Policy, Throttle, admit_all, forgive_all
from cubby.server.throttle.memory import FailureThrottle

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


InThread = Callable[[Callable[[], Any]], Awaitable[Any]]
"""Runs a blocking call off the event loop (`cubby.server.context.ServerContext.in_thread`)."""


class PasswordGate:
    """Checks link passwords for the public routes; one per server, closed with it. The
    throttles default to this process's own; ``in_thread`` runs their calls (a shared one talks
    to its server) off the event loop."""

    def __init__(
        self,
        trusted: TrustedProxies,
        check: Callable[[str, str], bool],
        *,
        per_address: Throttle | None = None,
        per_link: Throttle | None = None,
        in_thread: InThread = asyncio.to_thread,
        workers: int | None = None,
        max_waiting: int = 16,
    ) -> None:
        self.trusted = trusted
        self.check = check
        self.per_address = per_address or FailureThrottle(Policy(free=ADDRESS_FREE))
        self.per_link = per_link or FailureThrottle(Policy(free=LINK_FREE))
        self.in_thread = in_thread
        self.max_waiting = max_waiting
        self.waiting = 0
        self.pool = ThreadPoolExecutor(
            max_workers=workers or max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="cubby-scrypt"
        )

    async def attempt(self, scope: Mapping[str, object], link_id: str, given: str, stored: str) -> Verdict:
        """Whether ``given`` is the password whose hash is ``stored``, within the limits."""
        addr = "addr:" + address_key(scope_client_address(scope, self.trusted))
        link = "link:" + link_id
        if self.waiting >= self.max_waiting:
            return Verdict(Outcome.BUSY, 1)
        self.waiting += 1  # from here: the throttle's calls wait for a thread too
        try:
            wait = await self.in_thread(lambda: self.admit(addr, link))
            if wait > 0:
                return Verdict(Outcome.THROTTLED, wait)
            right = await asyncio.get_running_loop().run_in_executor(self.pool, self.check, given, stored)
            if right:
                await self.in_thread(lambda: self.forgive(addr, link))
        finally:
            self.waiting -= 1
        return Verdict(Outcome.RIGHT if right else Outcome.WRONG)

    def forgive(self, addr: str, link: str) -> None:
        """Take back the failures `admit` recorded for a guess that proved right."""
        forgive_all(((self.per_address, addr), (self.per_link, link)))

    def admit(self, addr: str, link: str) -> int:
        """Admit the attempt under both keys (`admit_all`), or the seconds to wait: an
        address let in but a link refused gives the address its failure back."""
        return admit_all(((self.per_address, addr), (self.per_link, link)))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["Outcome", "PasswordGate", "Verdict", "address_key"]

"""Slowing down password guessing, per key (an account name, a client address, a public link).

Past a few free failures a key is locked for a delay that doubles with every further failure,
and a locked attempt is refused (429 with ``Retry-After``) before any password is hashed. The
web login (`cubby.server.sessions`) and public link passwords (`cubby.server.linkguard`) use it.

- `base`: the `Throttle` Protocol (its docstring is the contract), the `Policy`, and the pure
  transitions of a key's record.
- `memory`: `FailureThrottle`, in this process (the embedded server's).
- `redis`, `memcached`: the same state in the deployment's shared cache, so that the processes
  behind a load balancer share one count per key instead of each allowing its own free attempts.
- `fallback`: a shared throttle with the process's own beside it, for when the cache is down.
- `opener`: `Throttles`, chosen once per server from its cache URL (and what holds where).
"""

from cubby.server.throttle.base import Policy, Throttle, ThrottleUnavailable
from cubby.server.throttle.memory import FailureThrottle
from cubby.server.throttle.opener import Throttles, open_throttles

__all__ = ["FailureThrottle", "Policy", "Throttle", "ThrottleUnavailable", "Throttles", "open_throttles"]

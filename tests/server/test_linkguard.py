"""The rules behind link password throttling, on a fake clock: a failure recorded before the
check and forgiven when right, and the address key."""

from __future__ import annotations

from cubby.server.linkguard import address_key
from cubby.server.throttle import FailureThrottle, Policy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_right_guess_is_forgiven_and_clears_nothing_else():
    clock = Clock()
    t = FailureThrottle(Policy(free=3, first_delay=10.0), clock=clock)
    t.failed("a")
    t.failed("a")
    t.failed("a")  # recorded in advance: the third locks the key...
    assert t.retry_after("a") == 10
    t.forgive("a")  # ...until it proves right: then it is as if it never happened
    assert t.retry_after("a") == 0
    t.failed("a")  # the two earlier failures still count
    assert t.retry_after("a") == 10
    clock.now += 10
    assert t.retry_after("a") == 0
    t.failed("a")
    assert t.retry_after("a") == 20  # doubled
    t.forgive("b")  # an unknown key: nothing happens
    t.failed("c")
    t.forgive("c")
    assert t.retry_after("c") == 0


def test_address_keys():
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("unknown") == "unknown"

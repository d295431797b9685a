"""`FailureThrottle` and `address_key`: the rules behind link password throttling, on a fake clock."""

from __future__ import annotations

from cubby.server.throttle import FailureThrottle, address_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_empties_refills_and_gives_back_right_guesses():
    clock = Clock()
    t = FailureThrottle(3, 10.0, clock=clock)
    for _ in range(3):
        assert t.wait("a") == 0
        t.take("a")
    assert t.wait("a") == 10.0  # empty: the next token comes in one refill period
    assert t.wait("b") == 0  # keys are independent
    clock.now += 4
    assert abs(t.wait("a") - 6.0) < 1e-9
    clock.now += 6
    assert t.wait("a") == 0
    t.take("a")
    t.give_back("a")  # a right guess costs nothing
    assert t.wait("a") == 0
    clock.now += 1000
    t.take("a")
    t.take("a")
    assert t.wait("a") == 0  # refilled to the burst, never above it: one left of three
    t.take("a")
    assert t.wait("a") > 0


def test_memory_is_bounded_by_dropping_the_least_recent_key():
    t = FailureThrottle(1, 60.0, max_keys=2, clock=Clock())
    for key in ("a", "b", "c"):
        t.take(key)
    assert t.wait("a") == 0 and t.wait("b") > 0 and t.wait("c") > 0


def test_address_keys():
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("unknown") == "unknown"

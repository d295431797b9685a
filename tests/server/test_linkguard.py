"""The address key of link password throttling (its failure recorded before the check and
forgiven when right is part of the throttle's contract: tests/server/test_throttle_contract.py)."""

from __future__ import annotations

from cubby.server.linkguard import PasswordGate, address_key
from cubby.server.peers import TrustedProxies
from cubby.server.throttle import FailureThrottle, Policy


def test_address_keys():
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("unknown") == "unknown"


def test_an_address_let_in_to_a_locked_link_gets_its_failure_back():
    now = [1000.0]
    per_address = FailureThrottle(Policy(free=2), clock=lambda: now[0])
    per_link = FailureThrottle(Policy(free=1), clock=lambda: now[0])
    gate = PasswordGate(TrustedProxies.parse(()), lambda given, stored: False, per_address=per_address, per_link=per_link)
    try:
        assert gate.admit("addr:a", "link:x") == 0  # counted under both; the link is locked now
        assert gate.admit("addr:b", "link:x") == 10  # refused by the link...
        assert gate.admit("addr:b", "link:y") == 0  # ...and address b was not charged for it:
        assert per_address.retry_after("addr:b") == 0  # one failure of its two free ones
        gate.forgive("addr:b", "link:y")
        assert gate.admit("addr:b", "link:z") == 0 and per_address.retry_after("addr:b") == 0
    finally:
        gate.close()

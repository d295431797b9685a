"""The connection gate's bookkeeping, without sockets: caps, claims by trusted proxies, lanes
and eviction (the fronts that use it are tested through real sockets in
`test_hostile_connections.py`)."""

from __future__ import annotations

import asyncio

from cubby.server.gate import ConnectionGate, ConnectionLimits, Lane
from cubby.server.peers import TrustedProxies


class Conn:
    def __init__(self) -> None:
        self.expired = False

    def expire(self) -> None:
        self.expired = True


def test_per_address_and_global_caps() -> None:
    gate = ConnectionGate(ConnectionLimits(max_connections=3, max_per_address=2))
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") is None
    assert gate.admit("10.0.0.1") == "too_many_from_address"
    assert gate.admit("10.0.0.2") is None
    assert gate.admit("10.0.0.3") == "full"  # nobody owes a request: nobody to evict
    gate.release(Conn(), "10.0.0.1")
    assert gate.admit("10.0.0.1") is None
    assert gate.per_address == {"10.0.0.1": 2, "10.0.0.2": 1} and gate.open == 3


def test_at_the_global_cap_the_oldest_connection_owing_a_request_makes_room() -> None:
    now = [0.0]

    async def run() -> None:
        gate = ConnectionGate(ConnectionLimits(max_connections=2, header_timeout=10), clock=lambda: now[0])
        first, second = Conn(), Conn()
        for c, addr in ((first, "a"), (second, "b")):
            assert gate.admit(addr) is None
            gate.awaiting_request(c)
            now[0] += 1
        gate.busy(second)  # second's request is in: it is the server's turn
        assert gate.admit("c") is None
        assert first.expired and not second.expired
        gate.close()

    asyncio.run(run())


def test_a_trusted_proxy_connection_is_counted_under_the_client_it_names() -> None:
    trusted = TrustedProxies.parse(["10.9.0.0/16"])
    gate = ConnectionGate(ConnectionLimits(max_connections=100, max_per_address=1), trusted)
    key = gate.address_key("10.9.0.5")
    assert key is None  # the balancer itself is not capped per address
    assert gate.admit(key) is None
    client = trusted.client_address("10.9.0.5", "203.0.113.7")
    assert gate.claim(key, client)
    assert gate.per_address == {"203.0.113.7": 1}
    assert gate.admit(gate.address_key("10.9.0.6")) is None
    assert not gate.claim(None, "203.0.113.7")  # that client is at its cap
    # An untrusted peer's own address counts, whatever header it sends.
    assert gate.address_key("198.51.100.1") == "198.51.100.1"


def test_lanes_keep_deadline_order_and_restart_a_clock() -> None:
    lane = Lane(5.0)
    a, b = Conn(), Conn()
    lane.enter(a, 0.0)
    lane.enter(b, 1.0)
    assert lane.due(5.5) == [a]
    lane.enter(a, 2.0)  # a frame arrived: a's clock restarts, it moves behind b
    assert lane.due(6.5) == [b]
    assert lane.oldest() is b

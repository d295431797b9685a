"""Who is on the other end of a connection: the address that per-client limits are keyed by.

Behind a load balancer every connection comes from the balancer, so a limit per peer address
would throttle everyone at once. The real address is taken from ``X-Forwarded-For`` only when
the peer itself is one of the configured trusted proxies (the shipped haproxy configuration
sets ``option forwardfor``; neither front parses the PROXY protocol, which would also cover
WebSocket upgrades on a TCP-mode balancer); anybody else could write any address they like into that header, so for them
the header is ignored and the socket's peer address is the answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrustedProxies:
    """The networks whose ``X-Forwarded-For`` is believed (``--trusted-proxy``; none by default)."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, specs: Iterable[str]) -> TrustedProxies:
        """``["127.0.0.1", "10.0.0.0/8"]`` -> networks; a bad spec raises ValueError naming it."""
        nets: list[Network] = []
        for spec in specs:
            try:
                nets.append(ipaddress.ip_network(spec.strip(), strict=False))
            except ValueError as e:
                raise ValueError(f"not an address or network for a trusted proxy: {spec!r}") from e
        return cls(tuple(nets))

    def trusts(self, address: str) -> bool:
        if not self.networks:
            return False  # no proxy trusted (the default): no address to parse per request
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.networks)

    def client_address(self, peer: str, forwarded_for: str | None) -> str:
        """The client's address: walk ``X-Forwarded-For`` from the right while the hop that
        appended it is trusted; the first untrusted hop is the client."""
        if not forwarded_for or not self.trusts(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        addr = peer
        while hops and self.trusts(addr):
            candidate = hops.pop()
            try:
                ipaddress.ip_address(candidate)
            except ValueError:
                return addr  # a malformed hop: stop at the last address we can vouch for
            addr = candidate
        return addr


def header(headers: Iterable[tuple[bytes, bytes]] | Mapping[str, str], name: str) -> str | None:
    """One header from ASGI raw headers or a mapping (case-insensitive)."""
    if isinstance(headers, Mapping):
        for k, v in headers.items():
            if k.lower() == name:
                return v
        return None
    key = name.encode()
    for k, v in headers:
        if k.lower() == key:
            return v.decode("latin-1")
    return None


def scope_client_address(scope: Mapping[str, object], trusted: TrustedProxies) -> str:
    """The client address of an ASGI HTTP or WebSocket scope."""
    client = scope.get("client")
    peer = str(client[0]) if isinstance(client, (tuple, list)) and client else "unknown"
    if not trusted.trusts(peer):
        return peer  # the header is only read from a trusted proxy (none, by default)
    raw = scope.get("headers") or []
    return trusted.client_address(peer, header(raw, "x-forwarded-for"))  # type: ignore[arg-type]

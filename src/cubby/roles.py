"""The three roles of a cubby deployment and which one serves each API route.

Shared by the server (to answer 421 ``wrong_role`` for a route it does not serve) and the
client (to send each request to the address discovery gave for its role).
"""

from __future__ import annotations

ROLES = ("meta", "blocks", "notify")

# Longest prefix first. Everything else under /api/v1/ is the meta role's; discovery is anyone's.
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("/api/v1/discovery", "any"),
    ("/api/v1/blocks/", "blocks"),
    ("/api/v1/content/", "blocks"),
    ("/api/v1/notify", "notify"),
    ("/l/", "blocks"),
    ("/api/v1/", "meta"),
)


def role_for_path(path: str) -> str | None:
    """The role that serves ``path`` ("any" for discovery itself), or None for no API route."""
    for prefix, role in _PREFIXES:
        if path == prefix.rstrip("/") or path.startswith(prefix):
            return role
    return None


def prefixes_of(role: str) -> tuple[str, ...]:
    """The path prefixes routed to ``role`` (for a load balancer's configuration)."""
    return tuple(prefix for prefix, owner in _PREFIXES if owner == role)

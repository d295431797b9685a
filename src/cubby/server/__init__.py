"""cubby.server."""

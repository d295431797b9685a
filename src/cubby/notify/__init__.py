"""cubby.notify."""

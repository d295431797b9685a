"""cubby.core."""

"""cubby.metadata."""

"""cubby.blockstore."""

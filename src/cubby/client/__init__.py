"""cubby.client."""

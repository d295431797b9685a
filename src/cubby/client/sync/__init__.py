"""cubby.client.sync."""

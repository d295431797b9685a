"""CLI command groups that live in their own modules; each has ``register(main)``."""

"""Command groups of the `cubby` CLI that live apart from cli.py; each has `register(main)`."""

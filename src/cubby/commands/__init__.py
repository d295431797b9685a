"""Command groups of the `cubby` CLI that live apart from cli.py, each with `register(main)`; and
the option types the commands share (`units`: sizes)."""

"""python -m cubby: the cubby command."""

from cubby.cli import main

main()

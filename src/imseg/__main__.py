"""``python -m imseg``: the command line."""

from .cli import main

main()

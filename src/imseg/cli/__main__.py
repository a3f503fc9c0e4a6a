"""``python -m imseg.cli``."""

from . import main

main()

"""Allow ``python -m clipsearch``."""

from clipsearch.cli import main

main()

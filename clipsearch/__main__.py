"""Allow ``python -m clipsearch``."""

from clipsearch.cli import main

if __name__ == "__main__":  # worker processes import this module too: only the real run starts the CLI
    main()

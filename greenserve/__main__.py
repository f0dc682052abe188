"""``python -m greenserve``: the same as the ``greenserve`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

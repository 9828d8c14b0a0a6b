"""``python -m sdlora``: the command line of :mod:`sdlora.cli`."""

import sys

from sdlora.cli import main

if __name__ == "__main__":
    sys.exit(main())

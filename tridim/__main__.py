"""``python -m tridim`` (and ``torchrun -m tridim``): the command-line interface."""

import sys

from tridim.cli import main

if __name__ == "__main__":
    sys.exit(main())

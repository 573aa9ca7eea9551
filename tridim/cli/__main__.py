"""``python -m tridim.cli``: the same as ``python -m tridim``."""

import sys

from tridim.cli import main

if __name__ == "__main__":
    sys.exit(main())

"""``python -m guardnet.cli``: the ``guardnet`` command."""

import sys

from guardnet.cli import main

if __name__ == "__main__":
    sys.exit(main())

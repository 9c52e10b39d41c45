"""``python -m guardnet.cli``: the ``guardnet`` command."""

import sys

from guardnet.cli import main

sys.exit(main())

"""``python -m datago``: see ``python -m datago --help``."""

import sys

from .cli import main

sys.exit(main())

"""``python -m kernelfarm``: the same as the ``kernelfarm`` command."""

import sys

from kernelfarm.cli import main

sys.exit(main())

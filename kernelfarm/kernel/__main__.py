"""``python -m kernelfarm.kernel``: the kernel process the supervisor spawns."""

import sys

from kernelfarm.kernel.process import main

sys.exit(main())

"""``kernelfarm`` whose supervisor never hears kernel 0 answer a hand-over of one slot.

Run as ``python lost_handover.py SLOT serve ...``.  The source kernel does hand the
slot's sockets over -- they reach the new owner -- but the supervisor gets an error
instead of the answer, as when the source dies or its answer is cut off right after the
sockets left.  So every step of the move that carries ``SLOT`` fails after the sockets
went, and is rolled back: the test then sees whether the rollback brought them back.
Only the source's hand-over (kernel 0, in a scale from one kernel) fails; the
rollback's hand-over, from the target back to kernel 0, is left alone.
"""

from __future__ import annotations

import sys
from typing import Any

from kernelfarm.cli import main
from kernelfarm.errors import ConnectionLost
from kernelfarm.supervisor.handle import KernelHandle

SLOT = int(sys.argv.pop(1))
SOURCE = 0
_call = KernelHandle.call


async def call(self: KernelHandle, method: str, *params: Any,
               timeout: float | None = 10.0) -> Any:
    result = await _call(self, method, *params, timeout=timeout)
    if method == "kernel.hand_over" and self.kernel_id == SOURCE and SLOT in params[0]:
        raise ConnectionLost(f"(injected) kernel {SOURCE} handed {result} sockets over, "
                             f"but its answer was lost")
    return result


KernelHandle.call = call  # type: ignore[method-assign]  # the fault, in this process only
sys.exit(main())

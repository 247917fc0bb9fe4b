"""How much the kernel asks for per FUSE ``read``: its read-ahead window for the mount.

The kernel reads a FUSE file through its page cache, in requests as large as the mount's
read-ahead window, at most 128 KiB unless raised (the window of the mount's backing
device, ``/sys/class/bdi/MAJOR:MINOR/read_ahead_kb``; the FUSE ``INIT`` answer can only
lower it).  A sequential read of 256 MiB was then 2,048 requests, each a wake-up of this
process, a trip through pyfuse3 and a reply: per MiB, the mount spent more CPU on the
requests than on the bytes.  Raised to 1 MiB (libfuse asks for 256 pages per request, so
the kernel's reads are then 1 MiB, as its writes are), a 1 MiB ``fs.pread`` answers one
request.  Only root may raise it; elsewhere the mount keeps the kernel's 128 KiB.
"""

from __future__ import annotations

import logging
import os

from kernelfarm.mount.mtab import device_of

log = logging.getLogger(__name__)

READ_AHEAD_KIB = 1024
BDI = "/sys/class/bdi/{device}/read_ahead_kb"


def widen_reads(mountpoint: str, kib: int = READ_AHEAD_KIB) -> bool:
    """Raise the read-ahead window of the FUSE mount at ``mountpoint`` to ``kib``; False
    (and the kernel's default kept) if that is not allowed here.  Call it once the
    kernel's ``INIT`` was answered, which would lower it again."""
    device = device_of(mountpoint)
    if device is None:
        log.warning("%s is not mounted: read-ahead left as it is", mountpoint)
        return False
    try:
        with open(BDI.format(device=device), "w") as knob:
            knob.write(str(kib))
    except OSError as exc:  # not root, or no sysfs: the kernel's reads stay 128 KiB
        log.info("read-ahead of %s left as it is: %s", mountpoint, os.strerror(exc.errno or 0))
        return False
    return True

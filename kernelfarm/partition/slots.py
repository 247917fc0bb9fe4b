"""Key -> slot: the one hash every kernel and every client must agree on.

The numbering is Redis Cluster's (CRC16-XMODEM of the key, modulo 16384), so it is easy to
check against a well-known implementation and any client in any language can compute it
with a stock CRC16.  16384 slots are few enough to ship the whole table to a client and many
enough that moving one slot moves a small share of the data.
"""

from __future__ import annotations

from binascii import crc_hqx

NSLOTS = 16384
"""Number of hash slots.  A power of two, so the modulo is a cheap mask."""


def key_slot(key: str | bytes) -> int:
    """The slot of a partition key (an fs volume name, a net namespace).

    Runs on the kernel's per-request path, so it is one C call and no allocation beyond
    the UTF-8 encoding.  ``surrogatepass`` lets any ``str`` Python can hold (file names
    decoded with ``surrogateescape`` included) hash instead of raising mid-request.
    """
    if isinstance(key, str):
        key = key.encode("utf-8", "surrogatepass")
    return crc_hqx(key, 0) % NSLOTS

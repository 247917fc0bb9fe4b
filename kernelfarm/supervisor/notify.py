"""systemd's readiness protocol (``Type=notify``) without a dependency.

systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace); the
service sends datagrams such as ``READY=1`` on it.  Outside systemd the variable is unset
and every call is a no-op, so the daemon behaves the same in a terminal.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("kernelfarm.supervisor")


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; ``False`` when not run by systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", os.environ["NOTIFY_SOCKET"], exc)
        return False
    return True

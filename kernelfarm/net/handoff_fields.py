"""A hand-off request's fields, checked: the kernel trusts nothing a peer sends.

Every field of a hand-off packet (wire in :mod:`kernelfarm.handoff`) is read through one
of these, so a wrong type or size is a ``TypeError``/``ValueError`` naming the field --
answered as an error, never a kernel fault -- and a namespace this kernel does not own is
``MOVED``.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

from kernelfarm import handoff
from kernelfarm.errors import Moved
from kernelfarm.net.relay import CHUNK
from kernelfarm.partition import key_slot


def owned(owns: Callable[[int], bool], ns: Any) -> str:
    """The namespace, if this kernel ``owns`` its slot (else ``MOVED``: ask the current
    map)."""
    if not isinstance(ns, str) or not ns:
        raise TypeError("hand-off field 'ns' must be a non-empty str")
    slot = key_slot(ns)
    if not owns(slot):
        raise Moved(f"slot {slot} is not served here", slot=slot)
    return ns


def typed(message: dict[str, Any], name: str, kind: type) -> Any:
    value = message.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise TypeError(f"hand-off field {name!r} must be {kind.__name__}")
    return value


def answer(message: dict[str, Any], name: str) -> bytes | dict[str, bytes]:
    """``first``/``second``: bytes, or the prefixes of an answer naming an address."""
    value = message.get(name, b"")
    if not isinstance(value, dict):
        return chunk(message, name)
    if set(value) != {"ipv4", "ipv6"} or not all(
            isinstance(v, bytes) and len(v) <= handoff.MAX_PREFIX for v in value.values()):
        raise ValueError(f"hand-off field {name!r} must be bytes or a map of 'ipv4' and "
                         f"'ipv6' prefixes of at most {handoff.MAX_PREFIX} bytes")
    return value


def first_to_write(first: bytes | dict[str, bytes], sock: socket.socket,
                   peer: bool = False) -> bytes:
    """``first`` as written: a prefix gets the local (or ``peer``) address and port."""
    if isinstance(first, bytes):
        return first
    host, port = (sock.getpeername() if peer else sock.getsockname())[:2]
    prefix = first["ipv6" if sock.family == socket.AF_INET6 else "ipv4"]
    address = socket.inet_pton(sock.family, str(host).partition("%")[0])
    return prefix + address + int(port).to_bytes(2, "big")


def chunk(message: dict[str, Any], name: str) -> bytes:
    value = message.get(name, b"")
    if not isinstance(value, bytes) or len(value) > CHUNK:
        raise ValueError(f"hand-off field {name!r} must be bytes of at most {CHUNK}")
    return value

"""Partition keys: which volume or namespace a request belongs to.

A leaf shared by both sides, so that the client routes exactly as the kernel checks: the
client computes a request's key to pick the owning kernel, the kernel recomputes it to
refuse a slot it does not own (``MOVED``).  It imports only :mod:`kernelfarm.errors` (a
leaf both sides use), so the client never loads server code for a key function.

Both run for every request on both sides: they only slice and check types; a key that
the handler would refuse still gets a key (or ``None``), and the handler that receives the
request refuses it with the proper error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

from kernelfarm.errors import InvalidParameter


def volume_of(path: object) -> str | None:
    """The volume of a path, its first component; ``None`` for ``/`` (any kernel)."""
    if type(path) is not str or len(path) < 2 or path[0] != "/":
        return None
    end = path.find("/", 1)
    return path[1:] if end < 0 else (path[1:end] or None)


def fs_key(params: Sequence[Any]) -> str | None:
    """The partition key of every ``fs.*`` call: the volume of its first parameter."""
    return volume_of(params[0]) if params else None


def namespace_key(params: Sequence[Any]) -> str:
    """The partition key of every ``net.*`` call: its first parameter, the namespace."""
    name = params[0]
    if not isinstance(name, str):
        raise InvalidParameter(f"namespace must be a str, got {type(name).__name__}")
    return name


KEY_OF: dict[str, Callable[[list[Any]], str | None]] = {"fs": fs_key, "net": namespace_key}
"""Partition key function per subsystem (the method's prefix before the dot)."""

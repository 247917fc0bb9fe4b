"""Paths as the fs methods take them: parsed strictly, never resolved.

A path is an absolute ``str``; its first component is the volume.  Everything that could
make a path mean something else than its plain components is refused rather than
interpreted, so no path can ever reach outside its volume:

- not a ``str``, not absolute, or not encodable as UTF-8 (lone surrogates): ``EINVAL``;
- a NUL character: ``EINVAL``;
- an empty component (``//``, or a trailing ``/``): ``EINVAL``.  Linux tolerates both, but
  accepting them would give one file several spellings; only ``/`` itself is allowed;
- a ``.`` or ``..`` component: ``EINVAL`` (refused, never resolved);
- a component over 255 bytes of UTF-8: ``ENAMETOOLONG``;
- a path of 4096 bytes or more: ``ENAMETOOLONG`` (Linux's ``PATH_MAX`` counts the NUL).

Names are never used as host paths: the on-disk layout (:mod:`.store`) encodes the volume
name, and everything below the volume lives inside its journal and snapshot.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence
from typing import Any, cast

from kernelfarm.errors import posix
from kernelfarm.keys import volume_of as volume_of  # the partition key, shared with clients

NAME_MAX = 255
PATH_MAX = 4096  # including the terminating NUL, as Linux counts it

Parsed = tuple[str | None, tuple[str, ...]]
"""``(volume, components below it)``; ``(None, ())`` for ``/``."""

REMEMBERED_MAX = 8192
"""Parsed paths a process keeps; past this the memory starts afresh (bounded, O(1))."""
KEPT_PATH_CHARS = 256
"""Longer paths are parsed afresh each time, here and in the fs subsystem's caches of
resolved paths and stat results: what every such memory holds stays bounded in bytes by
its count of short strings (8,192 x 256 characters here, 2 MiB of text at most) whatever
the length of the paths clients send (up to 4 KiB each, 32 MiB in 8,192 of them)."""
remembered: dict[str, Parsed] = {}
"""Every path of at most :data:`KEPT_PATH_CHARS` that :func:`parse` accepted, parsed: hot
handlers look a ``str`` path up here themselves (one frame less) and call :func:`parse`
when it is not there."""


def parse(path: object) -> Parsed:
    """``"/vol/a/b"`` -> ``("vol", ("a", "b"))``; ``"/"`` -> ``(None, ())``.

    Raises ``OSError`` (``EINVAL`` or ``ENAMETOOLONG``) for every path the module
    docstring refuses.  A valid path is parsed once: the kernel's key function
    (:func:`routing_key`) parses it, the handler finds it here (a path of over
    :data:`KEPT_PATH_CHARS` is parsed by each).  Parsing is a pure
    function of the string, so a remembered result is always the right one.
    """
    if type(path) is str:
        parsed = remembered.get(path)
        if parsed is not None:
            return parsed
    parsed = _parse(path)
    text = cast(str, path)  # _parse accepts only str
    if len(text) <= KEPT_PATH_CHARS:
        if len(remembered) >= REMEMBERED_MAX:
            remembered.clear()
        remembered[text] = parsed
    return parsed


def routing_key(params: Sequence[Any]) -> str | None:
    """The kernel's partition key of an fs request: the volume of its first parameter.

    Unlike the client's :func:`volume_of` it parses the whole path, once, so the handler
    that runs next gets the parsed form for a dict lookup.  A path :func:`parse` refuses
    still gets :func:`volume_of`'s key, and its handler refuses it with the proper error.
    """
    if not params:
        return None
    path = params[0]
    if type(path) is str:
        parsed = remembered.get(path)
        if parsed is not None:
            return parsed[0]
    try:
        return parse(path)[0]
    except OSError:
        return volume_of(path)


def _parse(path: object) -> Parsed:
    if type(path) is not str:
        raise posix(errno.EINVAL, f"path must be a string, not {type(path).__name__}")
    if not path.startswith("/"):
        raise posix(errno.EINVAL, f"path must be absolute: {path!r}")
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise posix(errno.EINVAL, f"path is not valid UTF-8: {path!r}") from None
    if size >= PATH_MAX:
        raise posix(errno.ENAMETOOLONG, f"path of {size} bytes")
    if "\0" in path:
        raise posix(errno.EINVAL, f"NUL in path: {path!r}")
    if path == "/":
        return None, ()
    parts = path[1:].split("/")
    for name in parts:
        check_name(name, path)
    return parts[0], tuple(parts[1:])


def check_name(name: str, path: str) -> None:
    """One component: not empty, not ``.``/``..``, at most 255 bytes of UTF-8."""
    if not name or name == "." or name == "..":
        raise posix(errno.EINVAL, f"empty, '.' or '..' component in {path!r}")
    # A character is at most 4 bytes of UTF-8: short names need no encoding to measure.
    if len(name) * 4 > NAME_MAX and len(name.encode("utf-8")) > NAME_MAX:
        raise posix(errno.ENAMETOOLONG, f"component of over {NAME_MAX} bytes in {path!r}")

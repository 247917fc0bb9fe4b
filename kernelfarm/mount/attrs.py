"""From the farm's answers to FUSE's: ``fs.stat`` maps to ``EntryAttributes``, and every
failure to one errno.

The farm keeps no owner: every inode shows the uid and gid of the mounting user.  It keeps
no access time either: ``st_atime`` is ``st_mtime``.  A name known missing is answered as
a negative entry the kernel may keep (:func:`no_entry`).
"""

from __future__ import annotations

import errno
import functools
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Coroutine, ParamSpec, TypeVar

import pyfuse3

from kernelfarm.errors import KernelfarmError

log = logging.getLogger(__name__)

NAME_MAX = 255
BLOCK = 512
IO_BLOCK = 128 * 1024  # st_blksize: cp and friends size their buffers by it


@dataclass(frozen=True)
class Caching:
    """How long the kernel may trust what the mount told it (seconds)."""

    entry_timeout: float = 1.0
    attr_timeout: float = 1.0


def entry_attributes(ino: int, st: dict[str, Any], uid: int, gid: int,
                     caching: Caching, left: float | None = None
                     ) -> pyfuse3.EntryAttributes:
    """``left``: for an answer from the mount's cache, the rest of its freshness."""
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = ino
    attrs.generation = 0
    attrs.entry_timeout = caching.entry_timeout if left is None else left
    attrs.attr_timeout = caching.attr_timeout if left is None else left
    attrs.st_mode = st["mode"]
    attrs.st_nlink = st["nlink"]
    attrs.st_uid = uid
    attrs.st_gid = gid
    attrs.st_rdev = 0
    attrs.st_size = st["size"]
    attrs.st_blksize = IO_BLOCK
    attrs.st_blocks = (st["size"] + BLOCK - 1) // BLOCK
    attrs.st_atime_ns = st["mtime_ns"]
    attrs.st_mtime_ns = st["mtime_ns"]
    attrs.st_ctime_ns = st["ctime_ns"]
    return attrs


def no_entry(left: float) -> pyfuse3.EntryAttributes:
    """"No such name", which the kernel may keep for ``left`` seconds (inode 0)."""
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = 0
    attrs.entry_timeout = left
    return attrs


def plain_name(raw: bytes) -> bool:
    """A name the farm can hold (else only the farm says which errno: ENAMETOOLONG...)."""
    if len(raw) > NAME_MAX:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def errno_of(exc: BaseException) -> int:
    """The errno a program sees for ``exc``: the farm's POSIX code, else ``EIO``."""
    if isinstance(exc, pyfuse3.FUSEError):
        return exc.errno
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    if isinstance(exc, KernelfarmError):
        log.warning("farm error, answered EIO: %s", exc.message)
    else:
        log.error("unexpected error, answered EIO", exc_info=exc)
    return errno.EIO


P = ParamSpec("P")
R = TypeVar("R")


def fuse_errors(handler: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Answer every failure of a FUSE handler as an errno: pyfuse3 stops its main loop on
    any exception that is not a ``FUSEError``."""

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await handler(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except Exception as exc:
            raise pyfuse3.FUSEError(errno_of(exc)) from None

    return wrapper


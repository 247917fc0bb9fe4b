"""One exception hierarchy, and the one wire encoding of errors.

Errors travel in msgpack-rpc responses as a map ``{"code": NAME, "message": text, ...}``.
POSIX conditions keep their POSIX names on the wire and become the built-in ``OSError``
subclass again on the client (``ENOENT`` -> ``FileNotFoundError``), so callers catch what
they already know.  Everything farm-specific is a :class:`KernelfarmError`, decoded through
one registry keyed by code.
"""

from __future__ import annotations

import errno
import os
import reprlib
from typing import Any, ClassVar

MAX_MESSAGE_CHARS = 512
"""Longest error message sent on the wire: an error never echoes more than a short prefix
of what a client sent (a 1 MB bad value must not come back as a 7 MB error)."""

_PREVIEW = reprlib.Repr()
_PREVIEW.maxlevel = 3
_PREVIEW.maxstring = _PREVIEW.maxother = 60


def preview(value: Any) -> str:
    """A short, bounded ``repr`` of client data for error messages (depth- and size-limited,
    so a 1,000-deep or 1 MB value costs nothing to describe)."""
    return _PREVIEW.repr(value)


class KernelfarmError(Exception):
    """Root of every error kernelfarm raises that is not a POSIX ``OSError``."""

    code: ClassVar[str] = "EFARM"

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}

    def __getattr__(self, name: str) -> Any:
        details = self.__dict__.get("details")
        if details is not None and name in details:
            return details[name]
        raise AttributeError(name)


class ConfigError(KernelfarmError):
    """The configuration file or a flag is invalid; the message names the key."""

    code = "ECONFIG"


# -- protocol: the peer sent something we cannot take -------------------------------------


class ProtocolError(KernelfarmError):
    """A malformed msgpack-rpc message or stream."""

    code = "EPROTO"


class MessageTooBig(ProtocolError):
    """A message over the configured size limit."""

    code = "E2BIG"


class InvalidParameter(KernelfarmError, TypeError, ValueError):
    """A parameter of the wrong type or value: the client's mistake, answered ``EINVAL``.

    Handlers check their parameters with this, never with a bare ``TypeError`` or
    ``ValueError``: a bug inside a handler raises those too, and a kernel answers a bug
    as its own fault (:func:`internal_error`), logged with its traceback.  It is also a
    ``TypeError`` and a ``ValueError`` so local callers catch it as they always did; on
    the wire it is ``EINVAL``, which clients raise as ``OSError`` like every POSIX code.
    """

    code = "EINVAL"


class NotAuthenticated(KernelfarmError):
    """The connection has not said who it is (``auth.hello``) and the method needs it."""

    code = "NOAUTH"


class UnknownMethod(KernelfarmError):
    """The method is not served here."""

    code = "ENOSYS"


# -- routing: the request reached the wrong place or the wrong time ------------------------


class RoutingError(KernelfarmError):
    """The request must be retried elsewhere or later; clients handle these themselves."""


class Moved(RoutingError):
    """The slot is owned by another kernel: details ``slot``, ``kernel``, ``addr``, ``epoch``."""

    code = "MOVED"


class TryAgain(RoutingError):
    """The slot is moving or its kernel is recovering; retry after a short back-off."""

    code = "TRYAGAIN"


# -- connection: the transport failed ---------------------------------------------------------


class ConnectionLost(KernelfarmError, ConnectionError):
    """The connection to a kernel or the supervisor broke while a request was in flight.

    Also a :class:`ConnectionError`, so code that handles a broken connection the standard
    way handles this one too."""

    code = "ECONNLOST"


class Timeout(KernelfarmError, TimeoutError):
    """A client-side deadline passed before an answer came; also a :class:`TimeoutError`."""

    code = "ETIMEOUT"


class RemoteError(KernelfarmError):
    """An error whose code this client does not know (a newer server, say)."""

    code = "EREMOTE"


_REGISTRY: dict[str, type[KernelfarmError]] = {}


def _register(*classes: type[KernelfarmError]) -> None:
    for cls in classes:
        _REGISTRY[cls.code] = cls


_register(ConfigError, ProtocolError, MessageTooBig, UnknownMethod, Moved, TryAgain,
          ConnectionLost, Timeout, NotAuthenticated)


def errno_name(number: int) -> str:
    return errno.errorcode.get(number, "EIO")


def to_wire(exc: BaseException) -> dict[str, Any]:
    """Encode any exception raised by a handler as a wire error map.

    ``TypeError``/``ValueError`` become ``EINVAL``: the supervisor's control methods check
    their parameters with them.  A kernel tells a client's mistake from a bug before it
    gets here (:meth:`kernelfarm.kernel.kernel.Kernel.fault`).  Anything else unexpected
    is :func:`internal_error`, so the peer learns something broke without the server
    going down.
    """
    if isinstance(exc, KernelfarmError):
        wire = exc.to_wire()
    elif isinstance(exc, OSError) and exc.errno is not None:
        message = exc.strerror or os.strerror(exc.errno)
        if exc.filename is not None:
            message = f"{message}: {preview(exc.filename)}"
        wire = {"code": errno_name(exc.errno), "message": message}
    elif isinstance(exc, (TypeError, ValueError, KeyError, IndexError, OverflowError)):
        wire = {"code": "EINVAL", "message": f"invalid parameters: {exc}"}
    else:
        return internal_error(exc)
    return _bounded(wire)


def _bounded(wire: dict[str, Any]) -> dict[str, Any]:
    text = wire.get("message")
    if isinstance(text, str) and len(text) > MAX_MESSAGE_CHARS:
        wire["message"] = text[:MAX_MESSAGE_CHARS] + "..."
    return wire


def internal_error(exc: BaseException) -> dict[str, Any]:
    """The server's own fault (a bug), as the contract says it: ``EIO``, "internal error",
    naming the exception's type only (its text may quote client data; the log has it)."""
    return {"code": "EIO", "message": f"internal error: {type(exc).__name__}"}


class Refusal:
    """An expected failure that a handler returns instead of raising (``fs.stat`` of a
    missing path): the kernel answers with :attr:`error` as if the handler had raised
    ``posix(code, detail)``, the same wire map, but no exception is made, raised and
    formatted twice on the way (a miss costs about what a hit does)."""

    __slots__ = ("error",)

    def __init__(self, code: int, detail: str) -> None:
        self.error = _bounded({"code": errno_name(code),
                               "message": f"{os.strerror(code)}: {detail}"})


def from_wire(error: Any) -> Exception:
    """Decode a wire error map into the exception a client raises."""
    if not isinstance(error, dict):
        return RemoteError(f"malformed error: {error!r}")
    code = error.get("code")
    message = str(error.get("message", code))
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    cls = _REGISTRY.get(code) if isinstance(code, str) else None
    if cls is not None:
        return cls(message, **details)
    number = getattr(errno, code, None) if isinstance(code, str) and code.startswith("E") else None
    if isinstance(number, int):
        return OSError(number, message)  # OSError picks FileNotFoundError etc. itself
    return RemoteError(message, remote_code=code, **details)


def posix(code: int, detail: str | None = None) -> OSError:
    """A POSIX error to raise from a handler: ``raise posix(errno.ENOENT, path)``."""
    text = os.strerror(code)
    return OSError(code, f"{text}: {detail}" if detail else text)


def connect_failed(exc: OSError, host: str, port: int) -> OSError:
    """The same ``OSError`` (same class and errno), saying which address was tried."""
    if exc.errno is None:
        return exc
    return type(exc)(exc.errno, f"cannot connect to {host}:{port}: {exc.strerror or exc}")

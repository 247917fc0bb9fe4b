"""The checks of the values an fs method takes, answered in the contract's words.

A handler's parameters are what the client sent, unchecked until the handler checks them
here: a wrong type is ``EINVAL`` (:class:`~kernelfarm.errors.InvalidParameter`) naming the
parameter, never a Python ``TypeError`` from deeper down.  Exact type checks (``type(x)
is int``), not ``isinstance``: a ``bool`` is not an offset.
"""

from __future__ import annotations

from typing import Any

from kernelfarm.errors import InvalidParameter


def int_param(value: Any, what: str) -> int:
    if type(value) is not int:
        raise InvalidParameter(f"{what} must be an integer, not {type(value).__name__}")
    return value


def bytes_param(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if type(value) is bytearray:
        return bytes(value)
    raise InvalidParameter(f"data must be bytes, not {type(value).__name__}")


def mode_param(value: Any) -> int:
    mode = int_param(value, "mode")
    if mode < 0:
        raise InvalidParameter("mode must not be negative")
    return mode


def bool_param(value: Any, what: str) -> bool:
    if type(value) is not bool:
        raise InvalidParameter(f"{what} must be true or false, not {type(value).__name__}")
    return value


def str_param(value: Any, what: str) -> str:
    if type(value) is not str:
        raise InvalidParameter(f"{what} must be a string, not {type(value).__name__}")
    return value

"""What each RPC method takes, so a wrong call is answered in the contract's words.

A call with the wrong number of parameters must say ``fs.stat takes 1 parameter (path),
got 3``, not Python's ``FsSubsystem.stat() takes 2 positional arguments but 4 were
given``.  The shapes are read once from the handlers' signatures when the kernel (or the
supervisor's control service) is built and consulted only when a call has failed, so the
fast path pays nothing for them.  A leaf of the RPC layer: kernels and the supervisor
both use it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Protocol


class Method(Protocol):
    """What a method table holds: a kernel's ``Method``, the control port's
    ``ControlMethod``."""

    @property
    def handler(self) -> Callable[..., Any]: ...

    @property
    def wants_conn(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Params:
    """The positional parameters of one method: their names, how many are required."""

    names: tuple[str, ...]
    required: int
    more: bool = False
    """The handler takes any number beyond ``names`` (``*args``)."""

    @classmethod
    def of(cls, method: Method) -> Params:
        """Read from the handler's signature (``functools.wraps`` wrappers included)."""
        parameters = list(inspect.signature(method.handler).parameters.values())
        if method.wants_conn:
            parameters = parameters[1:]
        positional = [p for p in parameters
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return cls(names=tuple(p.name for p in positional),
                   required=sum(p.default is p.empty for p in positional),
                   more=any(p.kind is p.VAR_POSITIONAL for p in parameters))

    def accepts(self, count: int) -> bool:
        return self.required <= count and (self.more or count <= len(self.names))

    def mismatch(self, method: str, count: int) -> str:
        """``fs.mkdir takes 1 or 2 parameters (path[, mode]), got 3``."""
        names = ", ".join(self.names[:self.required])
        for name in self.names[self.required:]:
            names += f"[, {name}" if names else f"[{name}"
        names += "]" * (len(self.names) - self.required)
        most = len(self.names)
        if self.more:
            amount = f"at least {self.required}"
        elif most == self.required:
            amount = str(most)
        elif most == self.required + 1:
            amount = f"{self.required} or {most}"
        else:
            amount = f"{self.required} to {most}"
        if amount == "0":
            return f"{method} takes no parameters, got {count}"
        noun = "parameter" if amount == "1" else "parameters"
        return f"{method} takes {amount} {noun} ({names}), got {count}"

"""How a setting is declared: its default, what it means, and its bounds.

A leaf, so that each subsystem can declare its config section next to its code
(:mod:`kernelfarm.fs.config`, :mod:`kernelfarm.net.config`) while :mod:`kernelfarm.config`
lists every section explicitly: no section depends on who imported what first.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Callable


def setting(default: Any, help: str, *, minimum: float | None = None,
            check: Callable[[Any], object] | None = None) -> Any:
    """Declare a setting: its default, what it means, and optional bounds or a check."""
    return field(default=default, metadata={"help": help, "minimum": minimum, "check": check})

"""Logging a client's mistakes without letting a client flood the log.

A kernel logs one line per bad request or bad connection so an operator can see what
clients get wrong, but a fuzzer or a broken client sending a million bad requests must not
write a million lines (or tracebacks): at most ``burst`` lines per ``period`` seconds, and
the first line after a quiet spell says how many were left out.
"""

from __future__ import annotations

import logging
import time
from typing import Any


class RateLimitedLog:
    __slots__ = ("logger", "burst", "period", "_window_start", "_written", "_dropped")

    def __init__(self, logger: logging.Logger, burst: int = 10, period: float = 10.0) -> None:
        self.logger = logger
        self.burst = burst
        self.period = period
        self._window_start = -period
        self._written = 0
        self._dropped = 0

    def log(self, level: int, message: str, *args: Any, exc_info: Any = None) -> None:
        """One line at ``level`` (``%``-style ``args``), unless this window is full."""
        now = time.monotonic()
        if now - self._window_start >= self.period:
            self._window_start = now
            self._written = 0
            if self._dropped:
                self.logger.log(level, "(%d similar lines left out in the last %.0f s)",
                                self._dropped, self.period)
                self._dropped = 0
        if self._written >= self.burst:
            self._dropped += 1
            return
        self._written += 1
        self.logger.log(level, message, *args, exc_info=exc_info)

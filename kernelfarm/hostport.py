"""``HOST:PORT`` addresses as config, flags and clients write them.

A leaf: the config, the CLI, the supervisor and both clients parse addresses the same way
without importing each other.
"""

from __future__ import annotations

from typing import Any

Addr = tuple[str, int]


def parse_hostport(text: str) -> Addr:
    """``"127.0.0.1:7400"`` or ``"[::1]:7400"`` -> ``(host, port)``; ``ValueError`` else."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, number


def as_addr(address: Addr | str | list[Any]) -> Addr:
    """An address given as ``"HOST:PORT"`` or as a ``(host, port)`` pair (msgpack: a list)."""
    if isinstance(address, str):
        return parse_hostport(address)
    host, port = address
    return str(host), int(port)

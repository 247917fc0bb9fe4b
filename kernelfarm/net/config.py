"""The ``[net]`` config section: what a namespace may reach, bind and hold.

Security by default: unless the operator widens ``allow`` and ``bind_allow``, a namespace
can talk to and listen on loopback only.  The same limits apply to every namespace of
the farm; they are checked by :mod:`kernelfarm.net.policy` before any packet leaves.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from kernelfarm.settings import setting

LOOPBACK = ("127.0.0.0/8", "::1/128")


def parse_networks(values: Any) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """CIDR strings -> networks; host bits set (``127.0.0.1/8``) is a typo, not a network."""
    networks = []
    for text in values:
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise ValueError(f"has an invalid network {text!r}: {exc}") from None
    return tuple(networks)


def parse_port_ranges(values: Any) -> tuple[tuple[int, int], ...]:
    """``("80", "8000-8999")`` -> ``((80, 80), (8000, 8999))``."""
    ranges = []
    for text in values:
        low, sep, high = text.partition("-")
        if not low.strip().isdigit() or (sep and not high.strip().isdigit()):
            raise ValueError(f"has an invalid port range {text!r} (expected PORT or LOW-HIGH)")
        first = int(low)
        last = int(high) if sep else first
        if not 1 <= first <= last <= 65535:
            raise ValueError(f"has an invalid port range {text!r} (1..65535, LOW <= HIGH)")
        ranges.append((first, last))
    return tuple(ranges)


@dataclass(frozen=True)
class NetConfig:
    allow: tuple[str, ...] = setting(
        LOOPBACK, "networks (CIDR) a namespace may connect or send datagrams to",
        check=parse_networks)
    allow_ports: tuple[str, ...] = setting(
        (), 'destination ports a namespace may reach, as "PORT" or "LOW-HIGH"; empty = all',
        check=parse_port_ranges)
    bind_allow: tuple[str, ...] = setting(
        LOOPBACK, "networks (CIDR) of the local addresses a namespace may bind; add "
        '"0.0.0.0/32" or "::/128" to allow the wildcard address', check=parse_networks)
    max_sockets: int = setting(
        1024, "sockets one namespace may hold at once; one more is EMFILE", minimum=1)
    max_kernel_sockets: int = setting(
        4096, "sockets all namespaces of one kernel may hold at once; one more is EMFILE "
        "(lowered at boot if the host's descriptor limit has no room for it)", minimum=1)
    max_recv_bytes: int = setting(
        1024 * 1024, "largest net.recv / net.recvfrom result; a larger max is cut to this",
        minimum=1)
    default_timeout: float = setting(
        30.0, "seconds a wait (connect, accept, send, recv) may take when the caller gives "
        "no timeout; it then fails with ETIMEDOUT", minimum=0.0)
    max_timeout: float = setting(
        300.0, "longest wait a caller may ask for; a longer timeout is cut to this",
        minimum=0.0)

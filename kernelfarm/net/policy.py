"""What a namespace may reach and bind, decided before any packet leaves.

Addresses must be numeric (``127.0.0.1``, ``::1``).  A host name would need
``getaddrinfo``, which the event loop runs in a thread pool — and a kernel stays at one
OS thread — so names are ``EINVAL``; resolve them on the client.  The parsed address, not
the caller's text, is what reaches the host socket, so lenient spellings that the C
library would accept (``127.1``) can never slip past a check made on a different reading.

Whatever ``net.allow`` says, a namespace never reaches the farm itself: the supervisor's
control port and every kernel's RPC port (the kernel keeps that list current as kernels
come and go) are refused before any packet leaves, so a tenant cannot use a socket to
call the farm with someone else's connection, or the control API.
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any, Callable, Sequence

from kernelfarm.errors import InvalidParameter, posix
from kernelfarm.net.config import NetConfig, parse_networks, parse_port_ranges

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(host: Any, port: Any, *, bind: bool = False) -> tuple[IPAddress, int]:
    """Validate a wire ``(host, port)``; ``port`` 0 (any free port) only for ``bind``."""
    if not isinstance(host, str):
        raise InvalidParameter(f"host must be a str, got {type(host).__name__}")
    if not isinstance(port, int) or isinstance(port, bool):
        raise InvalidParameter(f"port must be an int, got {type(port).__name__}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise posix(errno.EINVAL, f"{host!r} is not a numeric IP address (host names "
                    "are resolved by the client, not the kernel)") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise posix(errno.EINVAL, f"scoped IPv6 address {host!r} is not supported")
    if not (0 if bind else 1) <= port <= 65535:
        raise posix(errno.EINVAL, f"port {port} out of range")
    return address, port


def _effective(address: IPAddress) -> IPAddress:
    """``::ffff:10.0.0.1`` reaches 10.0.0.1: judge the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


Endpoints = Sequence[tuple[str, int]]


class Policy:
    """The ``[net]`` limits, parsed once; every check raises ``EACCES`` or returns.

    ``farm`` returns the farm's own listeners as ``(host, port)``; a new sequence object
    whenever they change, so they are parsed again only then.
    """

    def __init__(self, config: NetConfig, farm: Callable[[], Endpoints] = tuple) -> None:
        self._allow = parse_networks(config.allow)
        self._ports = parse_port_ranges(config.allow_ports)
        self._bind_allow = parse_networks(config.bind_allow)
        self._farm = farm
        self._farm_seen: Endpoints | None = None
        self._farm_ports: dict[int, set[IPAddress | None]] = {}

    def _farm_listeners(self) -> dict[int, set[IPAddress | None]]:
        """port -> the addresses it listens on (``None``: every address, a wildcard)."""
        endpoints = self._farm()
        if endpoints is not self._farm_seen:
            ports: dict[int, set[IPAddress | None]] = {}
            for host, port in endpoints:
                address = _effective(ipaddress.ip_address(host))
                ports.setdefault(port, set()).add(None if address.is_unspecified
                                                  else address)
            self._farm_seen, self._farm_ports = endpoints, ports
        return self._farm_ports

    def check_destination(self, address: IPAddress, port: int) -> None:
        """May a namespace connect or send to ``address:port``?"""
        target = _effective(address)
        listening = self._farm_listeners().get(port)
        # Connecting to 0.0.0.0 or :: reaches this host, as loopback does.
        if listening is not None and (None in listening or target in listening
                                      or target.is_unspecified):
            raise posix(errno.EACCES, f"destination {address} port {port} is the farm's "
                        "own (control or kernel RPC port)")
        if not any(target in network for network in self._allow):
            raise posix(errno.EACCES, f"destination {address} is not in net.allow")
        if self._ports and not any(lo <= port <= hi for lo, hi in self._ports):
            raise posix(errno.EACCES, f"destination port {port} is not in net.allow_ports")

    def check_bind(self, address: IPAddress) -> None:
        """May a namespace bind (and so receive on) ``address``?"""
        local = _effective(address)
        if not any(local in network for network in self._bind_allow):
            raise posix(errno.EACCES, f"local address {address} is not in net.bind_allow")

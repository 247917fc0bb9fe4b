"""The fd hand-off wire: how a connection's descriptor reaches the kernel that relays it.

Every kernel serves a Unix ``SOCK_SEQPACKET`` socket next to its RPC port (bound by the
supervisor, so it survives restarts, and published as ``handoff`` in ``cluster.map``).
One packet is one msgpack map, with the descriptors it hands over attached as
``SCM_RIGHTS``; seqpacket keeps packets and their descriptors together, so there is no
framing to get wrong.  A peer sends requests with an ``id`` and gets one reply per
request: ``{"id": n, "error": None | wire error, ...}``.

Requests (``op``):

- ``check`` ``ns, token``: may this token use this namespace?  Lets a front-end refuse bad
  credentials before it has any destination to name.
- ``relay`` ``ns, token, host, port, first, early`` + one fd: connect out from the
  namespace (after the kernel's own credential and policy checks), write ``first`` to the
  handed-over connection, send ``early`` upstream, then relay both ways.  The reply carries
  ``sid`` and ``local`` (the outgoing socket's address).  ``first`` is bytes, or a map
  ``{"ipv4": prefix, "ipv6": prefix}``: the prefix of the outgoing socket's family
  followed by its local address and port in network byte order (4 or 16 bytes, then 2),
  for a front-end whose first answer names the bound address (SOCKS's BND.ADDR).
- ``bind`` ``ns, token, host, port, first, second, early`` + one fd: listen in the
  namespace (on loopback for a loopback ``host``, else the wildcard address, as policy
  allows), write ``first`` (naming the listening address, when it is a map of prefixes),
  accept one connection from ``host`` (from anyone if it is the unspecified address)
  within ``net.default_timeout``, write ``second`` (naming the connection's peer), send
  ``early`` to it and relay both ways.  The reply comes when the connection came.
- ``adopt`` (kernel to kernel only, during live scaling) + two fds: a relay whose namespace
  moved, with the bytes it held in flight; no reply (the sender has already let go).
- ``adopt_socket`` (kernel to kernel only) + its host socket's fd, or none for a socket
  neither bound nor connected: a socket made over RPC whose namespace moved, with its
  ``socket`` state (``sid``, ``kind``, ``listening``, ``kept``, ``tenant``,
  ``connecting``, counters); its unread bytes and pending connections are in the fd.
  No reply.
- ``barrier``: answered once every packet before it on the connection was handled; the
  kernel handing sockets over waits for it before the new slot table sends clients on.

This module is the leaf both sides share: the front-end never imports the kernel's code.
"""

from __future__ import annotations

import socket
from typing import Any

import msgpack

MAX_PACKET = 1024 * 1024
"""Largest hand-off packet; an ``adopt`` carries at most two relay chunks of data."""

MAX_FDS = 2

MAX_PREFIX = 64
"""Longest prefix of a ``first`` that names the bound address."""

RELAY_ERRORS_RETRYABLE = frozenset({"MOVED", "TRYAGAIN"})
"""Reply codes that mean "ask the current owner": refresh ``cluster.map`` and retry."""


def pack(message: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(message, use_bin_type=True)
    return packed


def unpack(packet: bytes) -> dict[str, Any]:
    """One packet -> its map; anything else is a ``ValueError`` naming what came."""
    try:
        message = msgpack.unpackb(packet, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ValueError(f"malformed hand-off packet: {exc}") from None
    if not isinstance(message, dict):
        raise ValueError(f"a hand-off packet is a map, got {type(message).__name__}")
    return message


def receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One packet and the descriptors that came with it (``b""`` at end of stream).

    Descriptors cut off by a full ancillary buffer would leak in this process; a packet
    that lost some is refused after closing whatever did arrive.
    """
    data, fds, flags, _ = socket.recv_fds(sock, MAX_PACKET, MAX_FDS)
    if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC):
        for fd in fds:
            _close_quietly(fd)
        raise ValueError("hand-off packet or its descriptors were truncated")
    return data, fds


def _close_quietly(fd: int) -> None:
    try:
        socket.close(fd)
    except OSError:
        pass

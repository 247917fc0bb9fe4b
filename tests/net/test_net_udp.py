"""UDP through the net subsystem, both ways, against plain sockets on 127.0.0.1."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest

from net_harness import plain_listener, plain_recvfrom

NS = "bob"


@pytest.mark.asyncio
async def test_udp_sendto_and_recvfrom_both_ways(make_net: Any) -> None:
    net = make_net().client()
    async with net.socket(NS, "udp") as farm:
        farm_addr = await farm.bind("127.0.0.1", 0)
        with plain_listener("127.0.0.1", socket.SOCK_DGRAM) as plain:
            plain.sendto(b"to the farm", farm_addr)
            data, source = await farm.recvfrom(2048, timeout=5)
            assert (data, source) == (b"to the farm", plain.getsockname())
            assert await farm.sendto(b"from the farm", source) == 13
            assert await plain_recvfrom(plain) == (b"from the farm", farm_addr)
    stats = await net.stats(NS)
    assert (stats["bytes_in"], stats["bytes_out"]) == (11, 13)


@pytest.mark.asyncio
async def test_unbound_udp_socket_is_bound_to_loopback_not_the_wildcard(make_net: Any) -> None:
    """Left to the host, the first sendto would bind 0.0.0.0 and accept datagrams from
    every network, a bind that net.bind_allow never saw."""
    net = make_net().client()
    farm = await net.socket(NS, "udp")
    with plain_listener("127.0.0.1", socket.SOCK_DGRAM) as plain:
        await farm.sendto(b"x", plain.getsockname())
        data, source = await plain_recvfrom(plain)
    assert data == b"x" and source[0] == "127.0.0.1"
    [row] = await net.list(NS)
    assert row["local"] == ["127.0.0.1", source[1]]


@pytest.mark.asyncio
async def test_udp_recvfrom_times_out_and_tcp_refuses_datagram_calls(make_net: Any) -> None:
    net = make_net().client()
    farm = await net.socket(NS, "udp")
    await farm.bind("127.0.0.1", 0)
    with pytest.raises(TimeoutError):
        await farm.recvfrom(10, timeout=0.01)
    tcp = await net.socket(NS, "tcp")
    with pytest.raises(OSError) as info:
        await tcp.sendto(b"x", ("127.0.0.1", 9))
    assert info.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as info:
        await tcp.recvfrom(10, timeout=0)
    assert info.value.errno == errno.EOPNOTSUPP


@pytest.mark.asyncio
async def test_udp_over_ipv6_loopback(make_net: Any) -> None:
    net = make_net().client()
    farm = await net.socket(NS, "udp")
    farm_addr = await farm.bind("::1", 0)
    with plain_listener("::1", socket.SOCK_DGRAM) as plain:
        plain.sendto(b"six", farm_addr)
        assert await farm.recvfrom(10, timeout=5) == (b"six", plain.getsockname()[:2])
    # The family is fixed by the first address: IPv4 on this socket is refused.
    with pytest.raises(OSError) as info:
        await farm.sendto(b"four", ("127.0.0.1", 9))
    assert info.value.errno == errno.EAFNOSUPPORT

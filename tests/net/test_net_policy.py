"""Policy: what a namespace may reach and bind, refused before any packet leaves."""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

import pytest

from kernelfarm.config import build
from kernelfarm.errors import ConfigError
from kernelfarm.net.config import NetConfig
from kernelfarm.net.policy import Policy, parse_address
from net_harness import plain_listener

NS = "carol"


@pytest.mark.asyncio
async def test_narrowed_allow_refuses_127_0_0_2_and_nothing_reaches_it(make_net: Any) -> None:
    net = make_net(allow=["127.0.0.1/32"]).client()
    with plain_listener("127.0.0.2") as target:
        sock = await net.socket(NS, "tcp")
        with pytest.raises(PermissionError) as info:
            await sock.connect(*target.getsockname())
        assert info.value.errno == errno.EACCES
        # Proof that no SYN left: a control connection made afterwards is the first one
        # in the target's accept queue.
        with socket.create_connection(target.getsockname(), timeout=5) as control:
            target.settimeout(5)
            accepted, peer = target.accept()
            accepted.close()
            assert peer == control.getsockname()
            target.setblocking(False)
            with pytest.raises(BlockingIOError):
                target.accept()
        [row] = await net.list(NS)
        assert row["local"] is None  # no host socket was even made
    stats = await net.stats(NS)
    assert (stats["denied"], stats["errors"], stats["connects"]) == (1, 0, 0)


@pytest.mark.asyncio
async def test_allow_ports_and_bind_allow_are_enforced(make_net: Any, echo_port: int) -> None:
    net = make_net(allow_ports=["1-2"]).client()
    sock = await net.socket(NS, "tcp")
    with pytest.raises(PermissionError):
        await sock.connect("127.0.0.1", echo_port)
    with pytest.raises(PermissionError):
        await sock.bind("0.0.0.0", 0)  # the wildcard is not loopback
    udp = await net.socket(NS, "udp")
    with pytest.raises(PermissionError):
        await udp.sendto(b"x", ("127.0.0.1", echo_port))
    assert (await net.stats(NS))["denied"] == 3


@pytest.mark.asyncio
async def test_host_names_and_odd_spellings_are_einval(make_net: Any) -> None:
    net = make_net().client()
    sock = await net.socket(NS, "tcp")
    for host in ("localhost", "127.1", "2130706433", "fe80::1%lo", ""):
        with pytest.raises(OSError) as info:
            await sock.connect(host, 80)
        assert info.value.errno == errno.EINVAL, host


def policy(**settings: Any) -> Policy:
    return Policy(NetConfig(**settings))


def test_ipv4_mapped_ipv6_is_judged_as_the_ipv4_address_it_carries() -> None:
    narrow = policy(allow=("127.0.0.1/32",), bind_allow=("127.0.0.1/32",))
    narrow.check_destination(ipaddress.ip_address("::ffff:127.0.0.1"), 80)
    with pytest.raises(PermissionError):
        narrow.check_destination(ipaddress.ip_address("::ffff:127.0.0.2"), 80)
    with pytest.raises(PermissionError):
        narrow.check_destination(ipaddress.ip_address("::1"), 80)
    with pytest.raises(PermissionError):
        narrow.check_bind(ipaddress.ip_address("::ffff:10.0.0.1"))


def test_default_policy_is_loopback_only() -> None:
    default = policy()
    for host in ("127.0.0.1", "127.255.0.9", "::1"):
        default.check_destination(ipaddress.ip_address(host), 443)
        default.check_bind(ipaddress.ip_address(host))
    for host in ("10.0.0.1", "0.0.0.0", "::", "8.8.8.8", "2001:db8::1"):
        with pytest.raises(PermissionError):
            default.check_destination(ipaddress.ip_address(host), 443)
        with pytest.raises(PermissionError):
            default.check_bind(ipaddress.ip_address(host))


def test_port_ranges() -> None:
    ranged = policy(allow_ports=("80", "8000-8099"))
    loopback = ipaddress.ip_address("127.0.0.1")
    for port in (80, 8000, 8099):
        ranged.check_destination(loopback, port)
    for port in (79, 81, 7999, 8100):
        with pytest.raises(PermissionError):
            ranged.check_destination(loopback, port)


def test_parse_address_checks_types_and_ranges() -> None:
    assert parse_address("127.0.0.1", 0, bind=True)[1] == 0
    with pytest.raises(OSError):
        parse_address("127.0.0.1", 0)  # connecting to port 0 means nothing
    with pytest.raises(OSError):
        parse_address("127.0.0.1", 65536)
    with pytest.raises(TypeError):
        parse_address(b"127.0.0.1", 80)
    with pytest.raises(TypeError):
        parse_address("127.0.0.1", True)


@pytest.mark.parametrize("settings, key", [
    ({"allow": ["127.0.0.1/8"]}, "net.allow"),        # host bits set: a typo
    ({"allow": ["localhost"]}, "net.allow"),
    ({"bind_allow": ["::1/129"]}, "net.bind_allow"),
    ({"allow_ports": ["90-80"]}, "net.allow_ports"),
    ({"allow_ports": ["0"]}, "net.allow_ports"),
    ({"allow_ports": ["http"]}, "net.allow_ports"),
    ({"max_sockets": 0}, "net.max_sockets"),
    ({"allow": "127.0.0.0/8"}, "net.allow"),           # a string, not a list
    ({"alow": []}, "net.alow"),
])
def test_bad_net_config_is_rejected_by_name(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build({"net": settings})
    assert info.value.key == key

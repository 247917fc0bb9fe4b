"""SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), without I/O.

Each ``parse_*`` takes the bytes received so far and returns ``None`` while a message is
incomplete, else what it says and how many bytes it used; a message that breaks the
protocol raises :class:`SocksError` carrying the reply code to answer with.  The server
(:mod:`kernelfarm.socks.server`) only moves bytes.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
import struct
from dataclasses import dataclass

VERSION = 5
AUTH_VERSION = 1
METHOD_USERPASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF
AUTH_OK = b"\x01\x00"
AUTH_FAILED = b"\x01\x01"


class Command(enum.IntEnum):
    CONNECT = 1
    BIND = 2
    UDP_ASSOCIATE = 3


class AddressType(enum.IntEnum):
    IPV4 = 1
    DOMAIN = 3
    IPV6 = 4


class Reply(enum.IntEnum):
    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


REPLY_FOR_ERRNO = {
    errno.EACCES: Reply.NOT_ALLOWED,
    errno.EPERM: Reply.NOT_ALLOWED,
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.ETIMEDOUT: Reply.HOST_UNREACHABLE,
}
"""What SOCKS clients show their user for the errno the kernel reported."""


def reply_for(code: str | int | None) -> Reply:
    """The reply for an error: an errno number or its name (the wire's ``code``)."""
    number = getattr(errno, code, None) if isinstance(code, str) else code
    return REPLY_FOR_ERRNO.get(number, Reply.GENERAL_FAILURE) \
        if isinstance(number, int) else Reply.GENERAL_FAILURE


class SocksError(Exception):
    """The client broke the protocol or asked for what is not served: answer ``reply``
    (when there is a request to answer) and close."""

    def __init__(self, reply: Reply, message: str) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True)
class Request:
    command: int
    address_type: AddressType
    host: str
    port: int


def parse_greeting(data: bytes | bytearray) -> tuple[set[int], int] | None:
    """``VER NMETHODS METHODS...`` -> the offered methods."""
    if len(data) < 2:
        return None
    if data[0] != VERSION:
        raise SocksError(Reply.GENERAL_FAILURE, f"not SOCKS5 (version byte {data[0]})")
    end = 2 + data[1]
    if len(data) < end:
        return None
    return set(data[2:end]), end


def parse_auth(data: bytes | bytearray) -> tuple[str, str, int] | None:
    """``VER ULEN UNAME PLEN PASSWD`` (RFC 1929) -> username, password."""
    if len(data) < 2:
        return None
    if data[0] != AUTH_VERSION:
        raise SocksError(Reply.GENERAL_FAILURE, f"unknown auth version {data[0]}")
    user_end = 2 + data[1]
    if len(data) < user_end + 1:
        return None
    end = user_end + 1 + data[user_end]
    if len(data) < end:
        return None
    try:
        return (bytes(data[2:user_end]).decode(), bytes(data[user_end + 1:end]).decode(),
                end)
    except UnicodeDecodeError:
        raise SocksError(Reply.GENERAL_FAILURE, "username or password is not UTF-8") \
            from None


def parse_request(data: bytes | bytearray) -> tuple[Request, int] | None:
    """``VER CMD RSV ATYP DST.ADDR DST.PORT`` -> the request (host as text)."""
    if len(data) < 5:
        return None
    if data[0] != VERSION:
        raise SocksError(Reply.GENERAL_FAILURE, f"not SOCKS5 (version byte {data[0]})")
    parsed = _parse_address(data, 3)
    if parsed is None:
        return None
    kind, host, port, end = parsed
    return Request(data[1], kind, host, port), end


def _parse_address(data: bytes | bytearray, at: int
                   ) -> tuple[AddressType, str, int, int] | None:
    """``ATYP ADDR PORT`` starting at ``at`` -> type, host, port, end offset."""
    kind = data[at]
    if kind == AddressType.IPV4:
        start, end = at + 1, at + 5
    elif kind == AddressType.IPV6:
        start, end = at + 1, at + 17
    elif kind == AddressType.DOMAIN:
        if len(data) < at + 2:
            return None
        start, end = at + 2, at + 2 + data[at + 1]
    else:
        raise SocksError(Reply.ADDRESS_TYPE_NOT_SUPPORTED, f"address type {kind}")
    if len(data) < end + 2:
        return None
    raw = bytes(data[start:end])
    if kind == AddressType.DOMAIN:
        try:
            host = raw.decode("idna")
        except UnicodeError:
            raise SocksError(Reply.HOST_UNREACHABLE, f"bad host name {raw!r}") from None
    else:
        host = str(ipaddress.ip_address(raw))
    (port,) = struct.unpack("!H", data[end:end + 2])
    return AddressType(kind), host, port, end + 2


def parse_datagram(datagram: bytes) -> tuple[AddressType, str, int, bytes]:
    """A client's UDP datagram (``RSV RSV FRAG ATYP DST.ADDR DST.PORT DATA``) -> where it
    goes and its payload.  Fragments are not supported (RFC 1928 allows dropping them)."""
    if len(datagram) < 4 or datagram[2] != 0:
        raise SocksError(Reply.GENERAL_FAILURE, "short or fragmented UDP datagram")
    parsed = _parse_address(datagram, 3)
    if parsed is None:
        raise SocksError(Reply.GENERAL_FAILURE, "truncated UDP datagram header")
    kind, host, port, end = parsed
    return kind, host, port, datagram[end:]


def datagram(host: str, port: int, payload: bytes) -> bytes:
    """A datagram for the client, from ``host:port``."""
    return b"\x00\x00\x00" + reply(Reply.SUCCEEDED, host, port)[3:] + payload


def reply_prefixes(code: Reply) -> dict[str, bytes]:
    """A reply's bytes before BND.ADDR, by address family, for the kernel that knows the
    bound address to complete (the hand-off's ``first``)."""
    return {"ipv4": bytes([VERSION, code, 0, AddressType.IPV4]),
            "ipv6": bytes([VERSION, code, 0, AddressType.IPV6])}


def reply(code: Reply, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """``VER REP RSV ATYP BND.ADDR BND.PORT`` with a numeric bound address."""
    address = ipaddress.ip_address(host)
    kind = AddressType.IPV4 if address.version == 4 else AddressType.IPV6
    return bytes([VERSION, code, 0, kind]) + address.packed + struct.pack("!H", port)

"""The SOCKS5 front-end: handshake here, bytes in the kernels.

For each client connection: the RFC 1928 greeting, RFC 1929 username/password (username =
net namespace, password = tenant token, checked by the kernel that owns the namespace),
then the request.  A name to connect to is resolved here (a kernel never resolves); the
connection is then handed to the owning kernel with the destination, the token, the
success reply to write first and any bytes the client sent early, and this process
closes its copy: from then on it is out of the data path.  An error the kernel reports
(policy, refused, unreachable...) becomes the matching SOCKS reply.  BIND is the same
hand-off with ``op`` ``bind``: the kernel listens in the namespace, writes the first
reply, accepts one connection from the host the client named and writes the second.

The success reply names the outgoing connection's local address (BND.ADDR, BND.PORT):
the kernel writes it before it relays, completing the reply's prefix this process sends
along (nothing in a kernel knows how a SOCKS reply is built).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Callable, TypeVar

import kernelfarm.aio
from kernelfarm.errors import KernelfarmError
from kernelfarm.socks import protocol, udp
from kernelfarm.socks.kernels import Kernels
from kernelfarm.socks.protocol import AddressType, Command, Reply, SocksError

log = logging.getLogger("kernelfarm.socks")

HANDSHAKE_TIMEOUT = 30.0
CHECK_TTL = 2.0
"""How long a login the kernel accepted is taken on trust at the handshake.  The kernel
checks the token again on every hand-off, so a revoked token is refused (reply 0x02)
from the first connection after its revocation either way; this only saves a round trip
per connection of a busy client."""
CHECK_CACHE_LIMIT = 4096
MAX_HANDSHAKE_BYTES = 4096
"""Far above the largest handshake message (513 bytes); more is not a SOCKS client."""

T = TypeVar("T")


class HandshakeReader:
    """Collects the client's bytes until a ``parse_*`` function finds a whole message."""

    def __init__(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        self.loop = loop
        self.conn = conn
        self.buffer = bytearray()

    async def read(self, parse: Callable[[bytearray], tuple[Any, ...] | None]) -> Any:
        while True:
            parsed = parse(self.buffer)
            if parsed is not None:
                *value, used = parsed
                del self.buffer[:used]
                return value[0] if len(value) == 1 else tuple(value)
            if len(self.buffer) > MAX_HANDSHAKE_BYTES:
                raise SocksError(Reply.GENERAL_FAILURE, "handshake too long")
            data = await self.loop.sock_recv(self.conn, MAX_HANDSHAKE_BYTES)
            if not data:
                raise ConnectionResetError("client closed during the handshake")
            self.buffer += data


class SocksServer:
    def __init__(self, kernels: Kernels, listener: socket.socket) -> None:
        self.kernels = kernels
        self.listener = listener
        self._sessions: set[asyncio.Task[None]] = set()
        self._accepted: dict[tuple[str, str], float] = {}

    async def serve_forever(self) -> None:
        loop = asyncio.get_running_loop()
        self.listener.setblocking(False)
        while True:
            conn, _ = await loop.sock_accept(self.listener)
            task = loop.create_task(self._session(conn))
            self._sessions.add(task)
            task.add_done_callback(self._sessions.discard)

    async def close(self) -> None:
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        self.kernels.close()

    async def _session(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        # The handshake is several small replies in a row: without this, Nagle holds each
        # one after the first until the client's delayed ACK (tens of ms per connection).
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT) as deadline:
                await self._handshake(conn, deadline)
        except (SocksError, OSError, TimeoutError, KernelfarmError) as exc:
            log.debug("SOCKS session ended: %s", exc)
        finally:
            conn.close()  # after a hand-off the kernel holds its own copy

    async def _handshake(self, conn: socket.socket, deadline: asyncio.Timeout) -> None:
        loop = asyncio.get_running_loop()
        reader = HandshakeReader(loop, conn)
        methods = await reader.read(protocol.parse_greeting)
        if protocol.METHOD_USERPASS not in methods:
            await loop.sock_sendall(conn, bytes([protocol.VERSION,
                                                 protocol.METHOD_NONE_ACCEPTABLE]))
            return
        await loop.sock_sendall(conn, bytes([protocol.VERSION, protocol.METHOD_USERPASS]))
        try:
            ns, token = await reader.read(protocol.parse_auth)
        except SocksError:  # not UTF-8, a wrong version: RFC 1929's failure, then close
            await loop.sock_sendall(conn, protocol.AUTH_FAILED)
            raise
        if not await self._login(ns, token):
            await loop.sock_sendall(conn, protocol.AUTH_FAILED)
            return
        await loop.sock_sendall(conn, protocol.AUTH_OK)
        try:
            request = await reader.read(protocol.parse_request)
            if request.command == Command.UDP_ASSOCIATE:
                deadline.reschedule(None)  # lives as long as the client's connection
                # The namespace's UDP socket is the user's: opened with the user's token.
                async with kernelfarm.aio.Client(self.kernels.client.control,
                                                 token=token) as user:
                    await udp.associate(conn, user.net, ns, request, self._resolve_name)
                return
            if request.command not in (Command.CONNECT, Command.BIND):
                raise SocksError(Reply.COMMAND_NOT_SUPPORTED, f"command {request.command}")
            host = await self._resolve(request)
        except SocksError as exc:
            await loop.sock_sendall(conn, protocol.reply(exc.reply))
            raise
        handoff: dict[str, Any] = {
            "op": "relay", "token": token, "host": host, "port": request.port,
            "first": protocol.reply_prefixes(Reply.SUCCEEDED), "early": bytes(reader.buffer)}
        if request.command == Command.BIND:
            # Two replies (RFC 1928 section 4): the kernel writes both, the second when a
            # connection came; it waits for one up to the farm's net.default_timeout.
            deadline.reschedule(None)
            handoff.update(op="bind", second=protocol.reply_prefixes(Reply.SUCCEEDED))
        try:
            await self.kernels.request(ns, handoff, [conn.fileno()])
        except OSError as exc:
            await loop.sock_sendall(conn, protocol.reply(protocol.reply_for(exc.errno)))
            raise
        except KernelfarmError:
            await loop.sock_sendall(conn, protocol.reply(Reply.GENERAL_FAILURE))
            raise

    async def _login(self, ns: str, token: str) -> bool:
        """Does the namespace's kernel accept this token for it?"""
        now = time.monotonic()
        if self._accepted.get((ns, token), 0.0) > now:
            return True
        try:
            await self.kernels.request(ns, {"op": "check", "token": token})
        except (OSError, KernelfarmError) as exc:
            log.info("SOCKS login to namespace %r refused: %s", ns, exc)
            return False
        if len(self._accepted) >= CHECK_CACHE_LIMIT:
            self._accepted.clear()
        self._accepted[(ns, token)] = now + CHECK_TTL
        return True

    async def _resolve(self, request: protocol.Request) -> str:
        """A numeric address for the kernel (whose policy judges that address)."""
        if request.address_type is not AddressType.DOMAIN:
            return request.host
        return await self._resolve_name(request.host, request.port)

    @staticmethod
    async def _resolve_name(host: str, port: int) -> str:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise SocksError(Reply.HOST_UNREACHABLE, f"{host}: {exc}") from None
        return str(infos[0][4][0])

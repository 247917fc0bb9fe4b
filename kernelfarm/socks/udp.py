"""UDP ASSOCIATE: a SOCKS client's datagrams, sent and received by a UDP socket of its
namespace.

Unlike streams, these go through the farm's RPC (``net.sendto``/``net.recvfrom`` on a
socket of the namespace, so its policy, limits and counters apply): a datagram is one
call either way, and the SOCKS UDP header (RFC 1928 section 7) stays here, out of the
kernel.  The association lives as long as the client's TCP connection; datagrams are
taken only from the client's address (the port it named, or the first one it used).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

from kernelfarm.socks import protocol
from kernelfarm.socks.protocol import AddressType, SocksError

MAX_DATAGRAM = 65535
QUEUE_LIMIT = 256
"""Datagrams from the client waiting for the farm; more are dropped, as UDP may."""


class ClientDatagrams(asyncio.DatagramProtocol):
    """The front-end's UDP socket for one association: queues the client's datagrams."""

    def __init__(self, client_host: str, client_port: int) -> None:
        self.client_host = client_host
        self.client_port = client_port
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        self.sending = asyncio.Event()
        """Set once a datagram went out: the namespace's socket is bound from then on
        (its first ``net.sendto`` binds it), so there is something to receive on."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if addr[0] != self.client_host or self.client_port not in (0, addr[1]):
            return  # not from our client
        self.client_port = addr[1]
        if not self.queue.full():
            self.queue.put_nowait(data)


async def associate(conn: socket.socket, net: Any, ns: str, request: protocol.Request,
                    resolve: Any) -> None:
    """Serve one UDP association until the client's TCP connection ``conn`` ends.

    ``net`` is the asyncio client's ``net`` group; ``resolve`` turns a request's host into
    a numeric address.
    """
    loop = asyncio.get_running_loop()
    local_host = conn.getsockname()[0]
    client_host = conn.getpeername()[0]
    transport, client = await loop.create_datagram_endpoint(
        lambda: ClientDatagrams(client_host, request.port), local_addr=(local_host, 0))
    farm_sock = None
    try:
        farm_sock = await net.socket(ns, "udp")
        bound = transport.get_extra_info("sockname")
        await loop.sock_sendall(conn, protocol.reply(protocol.Reply.SUCCEEDED, bound[0],
                                                     bound[1]))
        tasks = [loop.create_task(_outbound(client, farm_sock, resolve)),
                 loop.create_task(_inbound(client, farm_sock, transport)),
                 loop.create_task(loop.sock_recv(conn, 1))]  # EOF ends the association
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        transport.close()
        if farm_sock is not None:
            await farm_sock.close()


async def _outbound(client: ClientDatagrams, farm_sock: Any, resolve: Any) -> None:
    """Client -> farm: strip the header, send from the namespace's socket."""
    while True:
        data = await client.queue.get()
        try:
            kind, host, port, payload = protocol.parse_datagram(data)
            if kind is AddressType.DOMAIN:
                host = await resolve(host, port)
            await farm_sock.sendto(payload, (host, port))
        except (SocksError, OSError):
            continue  # a datagram the policy refuses, or a bad one, is dropped
        client.sending.set()


async def _inbound(client: ClientDatagrams, farm_sock: Any,
                   transport: asyncio.DatagramTransport) -> None:
    """Farm -> client: add the header naming the sender."""
    await client.sending.wait()
    while True:
        try:
            payload, (host, port) = await farm_sock.recvfrom(MAX_DATAGRAM)
        except OSError as exc:
            if exc.errno == errno.ETIMEDOUT:
                continue
            raise
        if client.client_port:
            transport.sendto(protocol.datagram(host, port, payload),
                             (client.client_host, client.client_port))

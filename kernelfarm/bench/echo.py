"""Echo servers for benchmarks: the msgpack-rpc floor, and a plain byte echo for net-echo.

The msgpack-rpc echo is the floor every kernel figure is compared with: the least a
Python uvloop server can do per request and still speak the protocol.  Each read is fed
into one ``Unpacker``; the replies of that read are packed into one
``Packer(autoreset=False)`` buffer and leave in a single ``write()``.  A request's reply
is its first param, so the load generator's traffic shape is the kernels' shape.

The byte echo is the far end of the ``net-echo`` workload, of ``benchmarks/net_bench.py``
and of the net tests: a host TCP peer that returns whatever it receives and, when the
client half-closes, half-closes back.  One process may listen on several ports
(``--ports``): a benchmark that opens and closes many connections spreads them over ports
so the TIME_WAIT 4-tuples of loopback do not run out.

Both bind their socket by hand (numeric 127.0.0.1, port 0) and hand it over as ``sock=``,
which keeps the process at one OS thread (uvloop's ``start_server(host, ...)`` resolves the
host in libuv's thread pool and leaves threads behind).  As a process, the server stops on
SIGTERM/SIGINT and when its parent dies, so a crashed benchmark leaves nothing behind.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import msgpack
import psutil
import uvloop

from kernelfarm.bench.loadgen import Chain
from kernelfarm.errors import KernelfarmError
from kernelfarm.rpc.blocking import readable
from kernelfarm.supervisor.launch import end_process

MAX_BUFFER = 64 * 1024 * 1024
"""The most unparsed bytes one connection may hold: a bound on a hostile peer's memory."""

PARENT_POLL_S = 0.5
"""How often a server process checks that its parent is still alive."""
START_TIMEOUT_S = 30.0
"""Starting Python and importing uvloop on a loaded machine, or stopping it."""


class MsgpackEchoProtocol(asyncio.Protocol):
    """Replies ``[1, msgid, None, params[0]]`` to every request ``[0, msgid, method, params]``.

    Notifications are ignored; a request that is not the 4-element form gets an
    ``EPROTO`` error if its msgid can be read; an undecodable stream closes the connection.
    """

    __slots__ = ("_transport", "_unpacker", "_packer")

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_BUFFER)
        self._packer = msgpack.Packer(autoreset=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        packer = self._packer
        pack = packer.pack
        unpacker = self._unpacker
        broken = False
        try:
            unpacker.feed(data)
            for message in unpacker:
                try:
                    kind, msgid, _method, params = message
                    if kind == 0:
                        pack([1, msgid, None, params[0] if params else None])
                except (TypeError, ValueError, KeyError, IndexError):
                    _refuse(pack, message)
        except (ValueError, TypeError, msgpack.UnpackException):
            broken = True  # undecodable or over the buffer limit: nothing more can be parsed
        if packer.getbuffer().nbytes:
            transport.write(packer.bytes())
            packer.reset()
        if broken:
            transport.close()


def echoed(chain: Chain) -> Chain:
    """``chain`` with the results the msgpack-rpc echo gives: each request's first param."""
    return [(request[0], request[1], request[1][0] if request[1] else None)
            for request in chain]


def _refuse(pack: Any, message: Any) -> None:
    """Answer a malformed request with EPROTO when it carries a msgid, else drop it."""
    if isinstance(message, list) and len(message) >= 2 and message[0] == 0:
        pack([1, message[1], {"code": "EPROTO", "message": "malformed request"}, None])


class ByteEchoProtocol(asyncio.Protocol):
    """Writes back every byte it reads; pauses reading while the peer does not read."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._transport.write(data)

    def eof_received(self) -> bool:
        """The client half-closed: everything is echoed (or queued), so half-close back."""
        assert self._transport is not None
        self._transport.write_eof()
        return True  # keep the transport until the client closes its side too

    def pause_writing(self) -> None:
        assert self._transport is not None
        self._transport.pause_reading()

    def resume_writing(self) -> None:
        assert self._transport is not None
        self._transport.resume_reading()


PROTOCOLS = {"msgpack": MsgpackEchoProtocol, "bytes": ByteEchoProtocol}


def bind_loopback(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket bound by hand on a loopback address (see module docstring)."""
    if host not in ("127.0.0.1", "::1"):
        raise ValueError(f"echo servers listen on loopback only, not {host!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_echo(socks: Sequence[socket.socket], kind: str = "msgpack",
                     stop: asyncio.Event | None = None,
                     started: Callable[[], None] | None = None) -> None:
    """Serve the ``kind`` echo on bound listening sockets until ``stop`` is set.

    ``started`` is called once connections are being accepted.
    """
    protocol = PROTOCOLS[kind]
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(protocol, sock=sock, backlog=1024) for sock in socks]
    try:
        if started is not None:
            started()
        await (stop or asyncio.Event()).wait()
    finally:
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()


async def _serve_process(socks: Sequence[socket.socket], kind: str,
                         started: Callable[[], None]) -> None:
    """The process body: serve until SIGTERM/SIGINT or until the parent goes away.

    The port is reported (``started``) only once the signal handlers are in place, so a
    parent that stops the server right after learning its port gets a clean exit.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    parent = os.getppid()

    def watch_parent() -> None:
        # Reparenting (to init or a subreaper) is how a child learns its parent died.
        if os.getppid() != parent:
            stop.set()
        else:
            loop.call_later(PARENT_POLL_S, watch_parent)

    loop.call_later(PARENT_POLL_S, watch_parent)
    await serve_echo(socks, kind, stop, started)


@dataclass(frozen=True)
class EchoProcess:
    """A running echo server process: where it listens and its pid (for the CPU meter)."""

    addresses: list[tuple[str, int]]
    pid: int

    @property
    def address(self) -> tuple[str, int]:
        return self.addresses[0]


@contextmanager
def running_echo(kind: str = "msgpack", *, cpu: int | None = None,
                 host: str = "127.0.0.1", ports: int = 1) -> Iterator[EchoProcess]:
    """Run an echo server in its own process for the duration of the ``with`` block."""
    command = [sys.executable, "-m", "kernelfarm.bench.echo", "--kind", kind, "--host", host,
               "--ports", str(ports), "--print-port"]
    if cpu is not None:
        command += ["--cpu", str(cpu)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        line = process.stdout.readline() if readable(process.stdout, START_TIMEOUT_S) else b""
        numbers = line.split()
        if len(numbers) != ports or not all(n.isdigit() for n in numbers):
            raise KernelfarmError(f"echo server did not start (exit code {process.poll()})")
        yield EchoProcess([(host, int(n)) for n in numbers], process.pid)
    finally:
        end_process(process, timeout=START_TIMEOUT_S)
        if process.stdout is not None:
            process.stdout.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kernelfarm.bench.echo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kind", choices=sorted(PROTOCOLS), default="msgpack")
    parser.add_argument("--host", default="127.0.0.1", choices=["127.0.0.1", "::1"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ports", type=int, default=1,
                        help="listen on this many ports (the first is --port)")
    report = parser.add_mutually_exclusive_group(required=True)
    report.add_argument("--print-port", action="store_true",
                        help="print the bound ports on one line on stdout once listening")
    report.add_argument("--port-fd", type=int,
                        help="write the bound ports to this inherited fd, then close it")
    parser.add_argument("--cpu", type=int, help="pin the server to this core")
    args = parser.parse_args(argv)

    if args.cpu is not None:
        psutil.Process().cpu_affinity([args.cpu])
    socks = [bind_loopback(args.host, args.port if i == 0 else 0) for i in range(args.ports)]
    line = " ".join(str(sock.getsockname()[1]) for sock in socks)

    def report_port() -> None:
        if args.print_port:
            print(line, flush=True)
        else:
            with os.fdopen(args.port_fd, "w") as out:
                out.write(f"{line}\n")

    uvloop.run(_serve_process(socks, args.kind, report_port))


if __name__ == "__main__":
    main()

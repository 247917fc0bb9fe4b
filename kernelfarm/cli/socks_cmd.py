"""``kernelfarm socks``: a SOCKS5 proxy whose connections are sockets of net namespaces."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys

import uvloop

import kernelfarm.aio
from kernelfarm.cli.common import (
    add_client_options, add_log_level_option, control_address, log_level,
)
from kernelfarm.hostport import parse_hostport
from kernelfarm.socks.kernels import Kernels
from kernelfarm.socks.server import SocksServer


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "socks", help="SOCKS5 proxy: username = net namespace, password = tenant token")
    parser.add_argument("--listen", default="127.0.0.1:1080", metavar="HOST:PORT",
                        help="where to accept SOCKS clients (default 127.0.0.1:1080; port 0 "
                             "= any free port, printed in the ready line)")
    add_log_level_option(parser)
    add_client_options(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=log_level(args), stream=sys.stderr,
                        format="%(asctime)s socks %(levelname)s %(message)s")
    return uvloop.run(serve(control_address(args), args.listen))


async def serve(control: tuple[str, int], listen: str) -> int:
    """Serve until SIGTERM/SIGINT; one JSON line on stdout once accepting."""
    loop = asyncio.get_running_loop()
    host, port = parse_hostport(listen)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
        listener.listen(1024)
    except OSError:
        listener.close()
        raise
    client = kernelfarm.aio.Client(control)
    kernels = Kernels(client)
    server = SocksServer(kernels, listener)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await kernels.refresh()
        serving = loop.create_task(server.serve_forever())
        sys.stdout.write(json.dumps({"event": "ready", "pid": os.getpid(),
                                     "listen": list(listener.getsockname()[:2])}) + "\n")
        sys.stdout.flush()
        await stop.wait()
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        return 0
    finally:
        await server.close()
        await client.close()
        listener.close()

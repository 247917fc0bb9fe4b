"""What differs between the two faces besides ``async``/``await``: waiting, asking many
kernels at once, and opening a connection.  Written by hand; ``_sync/io.py`` is its twin."""

from __future__ import annotations

from asyncio import gather, sleep

from kernelfarm.rpc.client import RpcClientConnection, connect

__all__ = ["RpcClientConnection", "connect", "gather", "sleep"]

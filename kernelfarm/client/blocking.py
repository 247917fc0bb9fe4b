"""``kernelfarm.Client``: the blocking client, built from the control address alone.

It fetches the slot table once, then sends each request straight to the owning kernel over
a pooled connection.  ``MOVED`` refreshes the table and retries; ``TRYAGAIN`` and a kernel
that cannot be reached (restarting) back off and retry until the deadline.  A request that
was already sent when its connection broke is not resent: it may have been applied, and
only the caller knows whether repeating it is safe.

``timeout`` bounds each call; by default there is none, because every kernel bounds its own
waits (``net.max_timeout``) and a kernel that hangs is killed by its supervisor, which the
client sees as a closed connection.  Connecting always has a deadline.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from kernelfarm.client.routing import RETRYABLE, RetryPolicy, Router, reaction_to
from kernelfarm.hostport import Addr, as_addr
from kernelfarm.rpc.blocking import BlockingConnection

CONTROL_TIMEOUT_S = 30.0
"""Control calls always have a deadline: the supervisor answers them itself."""


class Client:
    def __init__(self, control: Addr | str, *, timeout: float | None = None,
                 retry: RetryPolicy | None = None) -> None:
        self.control = as_addr(control)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._conns: dict[Addr, BlockingConnection] = {}
        self.router = Router(self.cluster_map())

    # -- control API ----------------------------------------------------------------------

    def _control(self, method: str, *params: Any, timeout: float | None = CONTROL_TIMEOUT_S
                 ) -> Any:
        return self._connection(self.control).call(method, params, self.timeout or timeout)

    def cluster_map(self) -> dict[str, Any]:
        return self._control("cluster.map")  # type: ignore[no-any-return]

    def status(self) -> dict[str, Any]:
        return self._control("cluster.status")  # type: ignore[no-any-return]

    def scale(self, n: int) -> dict[str, Any]:
        # Moving many slots can take a while; the supervisor bounds each step itself.
        return self._control("cluster.scale", n, timeout=None)  # type: ignore[no-any-return]

    def refresh(self) -> None:
        self.router.update(self.cluster_map())

    # -- data path ------------------------------------------------------------------------

    def call(self, method: str, *params: Any) -> Any:
        """Call ``method`` on the kernel that owns its partition key."""
        deadline = time.monotonic() + self.retry.deadline_s
        attempt = 0
        while True:
            addr = self.router.route(method, list(params))
            conn: BlockingConnection | None = None
            try:
                conn = self._connection(addr)
                return conn.call(method, params, self.timeout)
            except RETRYABLE as exc:
                reaction = reaction_to(exc, reached=conn is not None)
                if reaction is None or time.monotonic() >= deadline:
                    raise
                if reaction.backoff:
                    time.sleep(self.retry.delay(attempt))
                if reaction.refresh:
                    self._refresh_quietly()
                if reaction.only_if_removed and addr in self.router.all_addrs.values():
                    raise
            attempt += 1

    def call_kernel(self, addr: Addr, method: str, *params: Any) -> Any:
        return self._connection(addr).call(method, params, self.timeout)

    def call_all(self, method: str, *params: Any) -> list[Any]:
        """Call ``method`` on every kernel (``fs.listdir("/")`` merges their volumes)."""
        return [self.call_kernel(addr, method, *params) for addr in self.router.kernels()]

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except OSError:
            pass  # the supervisor itself is briefly away; the caller's deadline bounds this

    def _connection(self, addr: Addr) -> BlockingConnection:
        conn = self._conns.get(addr)
        if conn is not None and conn.alive():
            return conn
        if conn is not None:
            conn.close()
        conn = BlockingConnection(addr[0], addr[1], timeout=self.timeout)
        self._conns[addr] = conn
        return conn

    @functools.cached_property
    def fs(self) -> Any:
        from kernelfarm.fs.client import FsApi

        return FsApi(self.call, self.call_all)

    @functools.cached_property
    def net(self) -> Any:
        from kernelfarm.net.client import NetApi

        return NetApi(self.call)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

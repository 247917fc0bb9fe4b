# Generated from kernelfarm/client/_async/farm.py by kernelfarm.client.unasync: do not edit.
"""The farm client, built from the control address alone.

It fetches the slot table, then sends each request straight to the owning kernel over one
pooled connection per kernel.  ``MOVED`` refreshes the table and retries; ``TRYAGAIN`` and
a kernel that cannot be reached (restarting) back off and retry until the deadline
(:mod:`kernelfarm.client.routing` decides which).  A request that was already sent when its
connection broke is not resent: it may have been applied, and only the caller knows
whether repeating it is safe.

``token`` is sent with ``auth.hello`` on every new connection (the control port and each
kernel, after ``MOVED`` or a reconnect too); without it the client sends
``$KERNELFARM_TOKEN``, else the admin token of the default data dir if it can read it.

``timeout`` bounds each call; by default there is none, because every kernel bounds its own
waits (``net.max_timeout``) and a kernel that hangs is killed by its supervisor, which the
client sees as a closed connection.  Connecting always has a deadline.
"""

from __future__ import annotations

import functools
import time
from typing import Any

from kernelfarm.auth.tokens import DEFAULT_DATA_DIR, find_token
from kernelfarm.client._sync.fs import FsApi
from kernelfarm.client._sync.io import OpenOnce, BlockingConnection, connect, gather, sleep
from kernelfarm.client._sync.net import NetApi
from kernelfarm.client.routing import RETRYABLE, RetryPolicy, Router, reaction_to
from kernelfarm.hostport import Addr, as_addr

CONTROL_TIMEOUT_S = 30.0
"""Control calls always have a deadline: the supervisor answers them itself."""


class Client:
    def __init__(self, control: Addr | str, *, token: str | None = None,
                 timeout: float | None = None, retry: RetryPolicy | None = None) -> None:
        self.control = as_addr(control)
        self.token = token if token is not None else find_token(data_dir=DEFAULT_DATA_DIR)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self._conns: dict[Addr, BlockingConnection] = {}
        self._opening: OpenOnce[Addr, BlockingConnection] = OpenOnce()
        self._router: Router | None = None
        self.connect()

    def connect(self) -> Client:
        """Fetch the slot table (the first call does it too)."""
        self._router = Router(self.cluster_map())
        return self

    @property
    def router(self) -> Router:
        if self._router is None:
            raise RuntimeError("not connected: use the client as a context manager "
                               "or call connect() first")
        return self._router

    # -- connections ----------------------------------------------------------------------

    def _open(self, addr: Addr) -> BlockingConnection:
        """A new connection to a kernel or the supervisor: the one place every connection
        starts, so whatever a connection must say first (a tenant's ``auth.hello``) is
        said here, once per connection, in both clients."""
        conn = connect(addr[0], addr[1])
        if self.token is not None:
            deadline = self.timeout or CONTROL_TIMEOUT_S
            try:
                conn.call("auth.hello", self.token, timeout=deadline)
            except BaseException:
                conn.close()
                raise
        return conn

    def _connection(self, addr: Addr) -> BlockingConnection:
        conn = self._conns.get(addr)
        if conn is None or conn.closed:
            if conn is not None:
                conn.close()
            conn = self._conns[addr] = self._opening(addr, self._open)
        return conn

    # -- control API ----------------------------------------------------------------------

    def _control(self, method: str, *params: Any,
                       timeout: float | None = CONTROL_TIMEOUT_S) -> Any:
        conn = self._connection(self.control)
        return conn.call(method, *params, timeout=self.timeout or timeout)

    def cluster_map(self) -> dict[str, Any]:
        return dict(self._control("cluster.map"))

    def status(self) -> dict[str, Any]:
        return dict(self._control("cluster.status"))

    def scale(self, n: int) -> dict[str, Any]:
        # Moving many slots can take a while; the supervisor bounds each step itself.
        return dict(self._control("cluster.scale", n, timeout=None))

    def control_call(self, method: str, *params: Any) -> Any:
        """Any control method (``tenant.add``, ...), with the control deadline."""
        return self._control(method, *params)

    def refresh(self) -> None:
        self.router.update(self.cluster_map())

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except OSError:
            pass  # the supervisor is briefly away; the caller's deadline bounds this

    # -- data path ------------------------------------------------------------------------

    def call(self, method: str, *params: Any) -> Any:
        """Call ``method`` on the kernel that owns its partition key."""
        if self._router is None:
            self.connect()
        deadline = time.monotonic() + self.retry.deadline_s
        attempt = 0
        while True:
            addr = self.router.route(method, list(params))
            conn: BlockingConnection | None = None
            try:
                conn = self._connection(addr)
                return conn.call(method, *params, timeout=self.timeout)
            except RETRYABLE as exc:
                reaction = reaction_to(exc, reached=conn is not None)
                if reaction is None or time.monotonic() >= deadline:
                    raise
                if reaction.backoff:
                    sleep(self.retry.delay(attempt))
                if reaction.refresh:
                    self._refresh_quietly()
                if reaction.only_if_removed and addr in self.router.all_addrs.values():
                    raise
            attempt += 1

    def call_kernel(self, addr: Addr, method: str, *params: Any) -> Any:
        conn = self._connection(addr)
        return conn.call(method, *params, timeout=self.timeout)

    def call_all(self, method: str, *params: Any) -> list[Any]:
        """Call ``method`` on every kernel (``fs.listdir("/")`` merges their volumes)."""
        if self._router is None:
            self.connect()
        return list(gather(
            *(self.call_kernel(addr, method, *params) for addr in self.router.kernels())))

    # -- the API groups -------------------------------------------------------------------

    @functools.cached_property
    def fs(self) -> FsApi:
        return FsApi(self.call, self.call_all)

    @functools.cached_property
    def net(self) -> NetApi:
        return NetApi(self.call)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def __enter__(self) -> Client:
        if self._router is None:
            self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

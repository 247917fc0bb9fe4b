"""``net.send`` and ``net.recv``: the net data path, from the kernel's dispatch to the host call.

Every other net method runs rarely (a socket is set up once and then moves data many
times), so they stay in :mod:`kernelfarm.net.subsystem`, whose ``async def`` handlers
cannot be compiled (``Params`` reads their signatures, the failure counting asks
``inspect`` whether they are coroutine functions).  These two are plain methods, and
their own module is in :data:`kernelfarm.accel.MODULES`: compiled, a data call reaches the
compiled :class:`~kernelfarm.net.sockets.FarmSocket` by a C call, with its parameter
checks and the caller's-socket lookup compiled as well.  Pure or compiled, a data call
is one frame from the kernel's dispatch to the socket's (see ``DataPath.callers``).

What the data calls need of the subsystem is its namespaces (the dict itself, shared),
the sockets that moved here and no connection has claimed yet, and the claim; the
bounds of caller input (timeouts, sizes) live here and the subsystem's other methods use
them too, so each is coded once.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Sequence
from typing import Any, Awaitable, Callable

from kernelfarm.errors import InvalidParameter, posix, preview
from kernelfarm.kernel.subsystem import Connection
from kernelfarm.net.config import NetConfig
from kernelfarm.net.namespace import Namespace
from kernelfarm.net.sockets import FarmSocket
from kernelfarm.rpc.answer import Answer


class DataPath:
    """The data calls over one kernel's namespaces, and the bounds of what callers ask."""

    def __init__(self, config: NetConfig, namespaces: dict[str, Namespace],
                 unclaimed: dict[tuple[str, int], FarmSocket],
                 claim: Callable[[Connection, Any, Any], None]) -> None:
        self.namespaces = namespaces
        self.unclaimed = unclaimed
        """Sockets that moved here with their namespace and no connection has named yet."""
        self.claim = claim
        self.max_recv_bytes: int = config.max_recv_bytes
        self.max_timeout: float = config.max_timeout
        self.default_timeout: float = min(config.default_timeout, config.max_timeout)
        """A call's timeout when it names none (``net.default_timeout``, bounded)."""

    # -- the data calls: one frame each from the dispatch to the socket ----------------------

    def send(self, conn: Connection, ns: Any, sid: Any, data: Any,
             timeout: Any = None) -> int | Awaitable[int]:
        """The count at once when the host takes everything (see ``Method.is_async``)."""
        try:
            if type(data) is not bytes:
                data = as_bytes(data)
            # parameters first: EINVAL before EBADF
            if timeout is None:
                wait = self.default_timeout
            elif type(timeout) is float and 0.0 <= timeout <= self.max_timeout:
                wait = timeout  # the usual timeout, in one test (a NaN fails it)
            else:
                wait = self.timeout(timeout)
            try:  # the usual case of callers, inline; subscripts cost less than get()
                sock = self.namespaces[ns].sockets[sid]
            except (KeyError, TypeError):  # TypeError: an unhashable sid
                sock = None
            if sock is None or type(sid) is not int or self.unclaimed \
                    or conn.session.grants is not None and sock.tenant != conn.session.tenant:
                sock = self.callers(conn, ns, sid)
            return sock.send(data, wait)
        except OSError as exc:
            self.count_failure(ns, exc)
            raise

    def recv(self, conn: Connection, ns: Any, sid: Any, size: Any,
             timeout: Any = None) -> bytes | Answer:
        """The data at once when there is some, else the answer the readiness gives."""
        try:
            if type(size) is not int or size < 1:
                size = self.size(size)  # refused, in the contract's words
            elif size > self.max_recv_bytes:
                size = self.max_recv_bytes
            # parameters first: EINVAL before EBADF
            if timeout is None:
                wait = self.default_timeout
            elif type(timeout) is float and 0.0 <= timeout <= self.max_timeout:
                wait = timeout  # as in send
            else:
                wait = self.timeout(timeout)
            try:  # the usual case of callers, inline; subscripts cost less than get()
                sock = self.namespaces[ns].sockets[sid]
            except (KeyError, TypeError):  # TypeError: an unhashable sid
                sock = None
            if sock is None or type(sid) is not int or self.unclaimed \
                    or conn.session.grants is not None and sock.tenant != conn.session.tenant:
                sock = self.callers(conn, ns, sid)
            return sock.recv(size, wait)
        except OSError as exc:
            self.count_failure(ns, exc)
            raise

    def reply_bound(self, params: Sequence[Any]) -> int:
        """The most data a waiting ``net.recv``/``net.recvfrom`` may answer with: its max
        (``params[2]``), cut to ``net.max_recv_bytes`` (0 for a max it will refuse)."""
        size = params[2] if len(params) > 2 else None
        if type(size) is not int or size < 1:
            return 0
        return size if size <= self.max_recv_bytes else self.max_recv_bytes

    # -- the caller's socket -----------------------------------------------------------------

    def callers(self, conn: Connection, ns: Any, sid: Any) -> FarmSocket:
        """Socket ``sid`` of namespace ``ns`` if the caller's tenant may use it: to every
        other tenant it does not exist (``EBADF``, as for a socket that does not).

        ``send`` and ``recv`` make its usual case inline and call it for the rest (a
        socket that moved here unclaimed, one that is not the caller's, a wrong sid): a
        call less per data call, and dict subscripts where it calls ``get``: 1,435 of 34,749
        instructions of a pure echo-first round trip (benchmarks/README.md, "The net
        path, fifth pass")."""
        if self.unclaimed:  # sockets moved here during live scaling, rarely
            self.claim(conn, ns, sid)
        namespace = self.namespaces.get(ns)
        if namespace is not None and type(sid) is int:
            farm_sock = namespace.sockets.get(sid)
            if farm_sock is not None:
                session = conn.session
                if session.grants is None or farm_sock.tenant == session.tenant:
                    return farm_sock
                raise namespace.missing(sid)
        return self.namespace(ns).get(sid)  # the precise error: no namespace, no such socket

    def namespace(self, ns: Any) -> Namespace:
        """The namespace ``ns``, which holds a socket, else ``EBADF``."""
        namespace = self.namespaces.get(ns)
        if namespace is None:
            raise posix(errno.EBADF, f"namespace {preview(ns)} holds no sockets")
        return namespace

    def count_failure(self, ns: Any, exc: OSError) -> None:
        """Count a failed call in its namespace: ``denied`` for policy, else ``errors``."""
        namespace = self.namespaces.get(ns) if isinstance(ns, str) else None
        if namespace is not None:
            namespace.counters.count_failure(exc)

    # -- bounds of what a caller asks --------------------------------------------------------

    def timeout(self, timeout: Any) -> float:
        """A caller's timeout bounded by ``max_timeout``; none = ``default_timeout``."""
        if timeout is None:
            return self.default_timeout
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool):
            raise InvalidParameter(f"timeout must be a number of seconds, got "
                                   f"{type(timeout).__name__}")
        if not timeout >= 0 or math.isinf(timeout):
            raise InvalidParameter(f"timeout must be finite and >= 0, got {timeout}")
        return min(float(timeout), self.max_timeout)

    def size(self, size: Any) -> int:
        """A recv's max, checked and cut to ``net.max_recv_bytes``."""
        return min(integer(size, "max", 1, 2**63 - 1), self.max_recv_bytes)


def as_bytes(data: Any) -> bytes:
    """``data`` as bytes (a bytearray is copied), else ``EINVAL``."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray):
        return bytes(data)
    raise InvalidParameter(f"data must be bytes (msgpack bin), got {type(data).__name__}")


def integer(value: Any, what: str, low: int, high: int) -> int:
    """``value`` if it is an int in ``low..high``, else ``EINVAL`` naming ``what``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidParameter(f"{what} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidParameter(f"{what} must be in {low}..{high}, got {value}")
    return value

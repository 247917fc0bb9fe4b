"""One host socket driven without blocking from the kernel's event loop.

Every operation first tries the non-blocking system call and, only when the host says
``EAGAIN``, waits for readiness with ``add_reader``/``add_writer`` until a deadline.
uvloop does not implement ``sock_sendto``/``sock_recvfrom``, and mixing its ``sock_*``
helpers with our own readiness waits on one descriptor would fight over the watcher, so
all operations share this one path.  Several requests may wait on one socket (pipelined
``recv`` calls, say): each readiness event wakes them all and each retries its call.

``send`` and ``recv`` are the data path, so they answer at once when the host call does
(no coroutine, no task), and when it must wait, ``recv`` waits with one future that the
readiness callback itself settles by retrying the call (no task, no second future).

The host socket is made lazily, by the first ``bind``, ``connect`` or ``sendto``: only the
address tells whether it is IPv4 or IPv6, and ``net.socket`` takes no family.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any, Awaitable, Callable, TypeVar

from kernelfarm.errors import TryAgain, posix
from kernelfarm.net.policy import IPAddress

T = TypeVar("T")

KINDS = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


def wire_address(address: Any) -> list[Any]:
    """A host socket address (2- or 4-tuple) -> the wire's ``[host, port]``."""
    return [address[0], address[1]]


class FarmSocket:
    """A TCP or UDP socket of a namespace; ``sid`` is its number there."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sid: int, kind: str) -> None:
        self.loop = loop
        self.sid = sid
        self.kind = kind
        self.sock: socket.socket | None = None
        self.listening = False
        self.kept = False
        self.owner: int | None = None  # id() of the client connection that holds it
        self.tenant: str | None = None  # the tenant it belongs to; others get EBADF
        self.closed = False
        self.connecting = False
        """A ``connect`` began and has not finished: its namespace may move meanwhile."""
        self.bytes_in = 0
        self.bytes_out = 0
        self._readers: list[Waiter] = []
        self._writers: list[Waiter] = []
        self._watched: set[int] = set()
        """``id()`` of the waiter lists whose direction the loop watches: a watch outlives
        its waiters until the next readiness finds nobody (no add/remove per wait)."""

    # -- set-up -----------------------------------------------------------------------------

    @classmethod
    def accepted(cls, loop: asyncio.AbstractEventLoop, sid: int,
                 sock: socket.socket) -> FarmSocket:
        farm_sock = cls(loop, sid, "tcp")
        sock.setblocking(False)
        _no_delay(sock)
        farm_sock.sock = sock
        return farm_sock

    def host_socket(self, address: IPAddress) -> socket.socket:
        """The host socket, made now with ``address``'s family if there is none yet."""
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        if self.sock is None:
            sock = socket.socket(family, KINDS[self.kind])
            sock.setblocking(False)
            self.sock = sock
        elif self.sock.family != family:
            have = 4 if self.sock.family == socket.AF_INET else 6
            raise posix(errno.EAFNOSUPPORT, f"socket {self.sid} is IPv{have}, {address} is not")
        return self.sock

    def opened(self) -> socket.socket:
        """The host socket of an operation that needs one (recv on a fresh socket...)."""
        if self.closed:
            raise posix(errno.EBADF, f"socket {self.sid} is closed")
        if self.sock is None:
            raise posix(errno.ENOTCONN, f"socket {self.sid} is neither bound nor connected")
        return self.sock

    def detach(self) -> socket.socket:
        """Give the host socket away (to a relay); this farm socket is then empty."""
        sock = self.opened()
        self._unwatch(self._readers)  # a watch may outlive its waiters: end it here
        self._unwatch(self._writers)
        self.sock = None
        return sock

    def is_bound(self) -> bool:
        return self.sock is not None and self.sock.getsockname()[1] != 0

    # -- operations -------------------------------------------------------------------------

    def bind(self, address: IPAddress, port: int) -> list[Any]:
        sock = self.host_socket(address)
        if self.kind == "tcp":
            # A restarted listener must not wait out TIME_WAIT; Linux still refuses two
            # live listeners on one port, so EADDRINUSE keeps its meaning.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((str(address), port))
        return wire_address(sock.getsockname())

    def listen(self, backlog: int) -> None:
        if self.kind != "tcp":
            raise posix(errno.EOPNOTSUPP, f"socket {self.sid} is UDP")
        if not self.is_bound():
            raise posix(errno.EDESTADDRREQ, f"bind socket {self.sid} before listen")
        self.opened().listen(backlog)
        self.listening = True

    async def connect(self, address: IPAddress, port: int, timeout: float) -> None:
        sock = self.host_socket(address)
        code = sock.connect_ex((str(address), port))
        if self.connecting and code == errno.EISCONN:
            code = 0  # finished while its namespace moved: the retried call succeeds
        elif code in (errno.EINPROGRESS, errno.EAGAIN) or \
                self.connecting and code == errno.EALREADY:
            self.connecting = True
            await self._wait(self._writers, timeout)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        self.connecting = False
        if code:
            raise posix(code, f"connect to {address} port {port}")
        if self.kind == "tcp":
            _no_delay(sock)

    async def accept(self, timeout: float,
                     admit: Callable[[], None]) -> tuple[socket.socket, Any]:
        """Accept one connection; ``admit`` runs just before the host call and may raise
        (``EMFILE``), so a refused connection stays queued as with POSIX ``accept``."""
        if not self.listening:
            raise posix(errno.EINVAL, f"socket {self.sid} is not listening")
        sock = self.opened()

        def admit_and_accept() -> tuple[socket.socket, Any]:
            admit()
            return sock.accept()

        return await self._retry(admit_and_accept, self._readers, timeout)

    def send(self, data: bytes, timeout: float) -> int | Awaitable[int]:
        """Send all of ``data``, or as much as the host took when the timeout passed.

        Waiting for the host to take everything is the backpressure: a slow peer keeps
        the caller's request in flight instead of this kernel buffering its data.  The
        count comes back at once when the host takes everything in one call (the usual
        case), else an awaitable of it.
        """
        sock = self.opened()
        if not data:
            return 0
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            self.bytes_out += sent
            return sent
        return self._send_rest(data, sent, self.loop.time() + timeout)

    async def _send_rest(self, data: bytes, sent: int, deadline: float) -> int:
        sock = self.opened()
        view = memoryview(data)
        while sent < len(view):
            try:
                sent += sock.send(view[sent:])
                continue
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                if sent:
                    break  # report what went out; the error comes back on the next call
                raise
            try:
                await self._wait(self._writers, deadline - self.loop.time())
            except (TimeoutError, TryAgain):  # TryAgain: the socket is moving
                if sent:
                    break
                raise
            sock = self.opened()
        self.bytes_out += sent
        return sent

    def recv(self, size: int, timeout: float) -> bytes | asyncio.Future[bytes]:
        """What the host has (``b""`` at end of stream) at once, else a future of it."""
        sock = self.opened()
        try:
            data = sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return self._settle_when_ready(self._readers, lambda: sock.recv(size), timeout)
        self.bytes_in += len(data)
        return data

    async def sendto(self, data: bytes, address: IPAddress, port: int, timeout: float) -> int:
        sock = self.host_socket(address)
        target = (str(address), port)
        sent = await self._retry(lambda: sock.sendto(data, target), self._writers, timeout)
        self.bytes_out += sent
        return sent

    async def recvfrom(self, size: int, timeout: float) -> tuple[bytes, Any]:
        sock = self.opened()
        data, address = await self._retry(lambda: sock.recvfrom(size), self._readers,
                                          timeout)
        self.bytes_in += len(data)
        return data, address

    def shutdown(self, how: int) -> None:
        self.opened().shutdown(how)

    def close(self) -> None:
        """Close now; requests still waiting on this socket fail with ``EBADF``."""
        if self.closed:
            return
        self.closed = True
        if self.sock is not None:
            self._unwatch(self._readers)
            self._unwatch(self._writers)
            self.sock.close()
        for waiter in self._readers + self._writers:
            waiter.fail(posix(errno.EBADF, f"socket {self.sid} was closed"))
        self._readers.clear()
        self._writers.clear()

    # -- moving with the namespace ---------------------------------------------------------

    def park(self) -> None:
        """Its namespace leaves this kernel: stop watching the host socket and answer every
        waiting request ``TRYAGAIN``, which its client retries at the new owner.  Nothing
        was read for them, so nothing is lost; a send that got part of its data out
        answers that count instead (``sendall`` goes on with the rest)."""
        if self.sock is not None:
            self._unwatch(self._readers)
            self._unwatch(self._writers)
        for waiter in self._readers + self._writers:
            waiter.fail(TryAgain(f"socket {self.sid} is moving with its namespace"))
        self._readers.clear()
        self._writers.clear()

    def state(self) -> dict[str, Any]:
        """What travels with the descriptor to the kernel that takes the namespace."""
        return {"sid": self.sid, "kind": self.kind, "listening": self.listening,
                "kept": self.kept, "tenant": self.tenant, "connecting": self.connecting,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}

    @classmethod
    def moved_in(cls, loop: asyncio.AbstractEventLoop, state: dict[str, Any],
                 sock: socket.socket | None) -> FarmSocket:
        """The socket another kernel parked, from its ``state`` and host socket."""
        sid, kind, tenant = state.get("sid"), state.get("kind"), state.get("tenant")
        if not isinstance(sid, int) or isinstance(sid, bool) or kind not in KINDS or \
                not isinstance(tenant, (str, type(None))) or \
                sock is not None and sock.type != KINDS[kind]:
            raise ValueError("moved socket state out of bounds")
        farm_sock = cls(loop, sid, kind)
        farm_sock.tenant = tenant
        farm_sock.listening = bool(state.get("listening"))
        farm_sock.kept = bool(state.get("kept"))
        farm_sock.connecting = bool(state.get("connecting"))
        for counter in ("bytes_in", "bytes_out"):
            value = state.get(counter)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(farm_sock, counter, value)
        if sock is not None:
            sock.setblocking(False)
            farm_sock.sock = sock
        return farm_sock

    def let_go(self) -> None:
        """Close our descriptor after a copy of it went to another kernel: the connection
        lives on there, so its peer sees nothing."""
        self.closed = True
        if self.sock is not None:
            self.sock.close()

    def describe(self) -> dict[str, Any]:
        """One row of ``net.list``."""
        local = peer = None
        if self.sock is not None and not self.closed:
            local = wire_address(self.sock.getsockname())
            try:
                peer = wire_address(self.sock.getpeername())
            except OSError:
                peer = None
        return {"sid": self.sid, "kind": self.kind, "local": local, "peer": peer,
                "listening": self.listening, "kept": self.kept,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}

    # -- waiting ----------------------------------------------------------------------------

    async def _retry(self, call: Callable[[], T], waiters: list[Waiter],
                     timeout: float) -> T:
        deadline = self.loop.time() + timeout
        while True:
            self.opened()
            try:
                return call()
            except (BlockingIOError, InterruptedError):
                pass
            await self._wait(waiters, deadline - self.loop.time())

    async def _wait(self, waiters: list[Waiter], timeout: float) -> None:
        """Until the socket is ready in ``waiters``' direction; ``ETIMEDOUT`` after
        ``timeout`` seconds, ``EBADF`` if it is closed meanwhile."""
        future: asyncio.Future[Any] = self.loop.create_future()
        waiter = Waiter(future, None)
        self._add_waiter(waiters, waiter, timeout)
        try:
            await future
        finally:
            self._drop(waiters, waiter)  # cancelled, say: stop watching for it now

    def _settle_when_ready(self, waiters: list[Waiter], call: Callable[[], T],
                           timeout: float) -> asyncio.Future[T]:
        """A future of ``call()``, retried by the readiness callback until it stops
        saying ``EAGAIN``; ``ETIMEDOUT`` after ``timeout`` s, ``EBADF`` on close."""
        future: asyncio.Future[T] = self.loop.create_future()
        self._add_waiter(waiters, Waiter(future, call), timeout)
        return future

    def _add_waiter(self, waiters: list[Waiter], waiter: Waiter, timeout: float) -> None:
        if timeout <= 0:
            raise posix(errno.ETIMEDOUT, f"socket {self.sid}")
        sock = self.opened()
        if id(waiters) not in self._watched:
            watch = self.loop.add_reader if waiters is self._readers else self.loop.add_writer
            watch(sock.fileno(), self._wake, waiters)
            self._watched.add(id(waiters))
        waiters.append(waiter)
        waiter.timer = self.loop.call_later(timeout, self._expire, waiters, waiter)

    def _wake(self, waiters: list[Waiter]) -> None:
        """The host says ready: settle every waiter whose call no longer blocks.

        The watch stays after the last waiter is settled, since the next request on this
        socket usually waits too; a readiness that finds nobody waiting ends it (the
        loop's watch is level-triggered, so it would fire again and again)."""
        if not waiters:
            self._unwatch(waiters)
            return
        waiters[:] = [waiter for waiter in waiters if not waiter.try_settle()]

    def _expire(self, waiters: list[Waiter], waiter: Waiter) -> None:
        self._drop(waiters, waiter)
        waiter.fail(posix(errno.ETIMEDOUT, f"socket {self.sid}"))

    def _drop(self, waiters: list[Waiter], waiter: Waiter) -> None:
        if waiter in waiters:
            waiters.remove(waiter)
            if waiter.timer is not None:
                waiter.timer.cancel()

    def _unwatch(self, waiters: list[Waiter]) -> None:
        if id(waiters) not in self._watched:
            return
        self._watched.discard(id(waiters))
        assert self.sock is not None
        if waiters is self._readers:
            self.loop.remove_reader(self.sock.fileno())
        else:
            self.loop.remove_writer(self.sock.fileno())


def _no_delay(sock: socket.socket) -> None:
    """Each ``net.send`` is a whole application write, already batched by the caller:
    Nagle's delay would only add a round trip to request/response traffic."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Waiter:
    """One request waiting for a socket to be ready: a future, and the host call that
    settles it (``None``: readiness alone settles it, for a coroutine that retries)."""

    __slots__ = ("future", "call", "timer")

    def __init__(self, future: asyncio.Future[Any], call: Callable[[], Any] | None) -> None:
        self.future = future
        self.call = call
        self.timer: asyncio.TimerHandle | None = None

    def try_settle(self) -> bool:
        """Settle the future if the socket is ready for it; False if it must wait on."""
        future = self.future
        if not future.done():
            if self.call is None:
                future.set_result(None)
            else:
                try:
                    future.set_result(self.call())
                except (BlockingIOError, InterruptedError):
                    return False
                except Exception as exc:
                    future.set_exception(exc)
        if self.timer is not None:
            self.timer.cancel()
        return True

    def fail(self, exc: BaseException) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if not self.future.done():
            self.future.set_exception(exc)

"""One host socket driven without blocking from the kernel's event loop.

Every operation first tries the non-blocking system call and, only when the host says
``EAGAIN``, waits for readiness with ``add_reader``/``add_writer`` until a deadline.
uvloop does not implement ``sock_sendto``/``sock_recvfrom``, and mixing its ``sock_*``
helpers with our own readiness waits on one descriptor would fight over the watcher, so
all operations share this one path.  Several requests may wait on one socket (pipelined
``recv`` calls, say): each readiness event wakes them all and each retries its call.

``send`` and ``recv`` are the data path, so they cost what a plain program pays for the
same traffic (``benchmarks/net_floor.py``): one host call each, answered at once when the
host does (no coroutine, no task).  A ``recv`` that must wait is one
:class:`~kernelfarm.rpc.answer.Answer` that the readiness callback settles by retrying the
call, handing the data straight to the client's connection (no future, no task).  The watch
on a stream socket's readable side stays on between requests (no epoll add/remove per
wait), and data that arrives while nobody waits is read then, once, and kept for the
next ``recv`` (``pending``): so a request/response exchange makes one ``recv`` system call
per response, never one that says ``EAGAIN``.  A socket keeps one timer per direction,
for its earliest deadline, instead of one per wait.

The host socket is made lazily, by the first ``bind``, ``connect`` or ``sendto``: only the
address tells whether it is IPv4 or IPv6, and ``net.socket`` takes no family.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any, Awaitable, Callable, TypeVar

from kernelfarm.errors import TryAgain, posix
from kernelfarm.net.counters import Counters
from kernelfarm.net.policy import IPAddress
from kernelfarm.rpc.answer import Answer

T = TypeVar("T")

KINDS = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
TIMER_SLACK_S = 0.001
"""A deadline this close is due: the loop's timers have millisecond resolution."""
READ_AHEAD_BYTES = 65536
"""The most a readiness nobody waits for reads (the last ``recv``'s size if smaller): a
bound on what a kernel holds per socket, and on what travels when the socket moves."""


WAIT_AT_HOME = Answer()
"""What ``recv`` answers, in the locked baseline, on a thread whose loop does not watch
the socket when the call must wait: the caller runs it again on the socket's loop (an
answer nobody is given; never settled)."""


def wire_address(address: Any) -> list[Any]:
    """A host socket address (2- or 4-tuple) -> the wire's ``[host, port]``."""
    return [address[0], address[1]]


class Waiter(Answer):
    """One request waiting for a socket to be ready, and its answer: what settles it and
    when it gives up.  ``size`` > 0: a ``recv`` of that many bytes, answered with the data
    (its connection takes the answer itself); 0: readiness alone settles it (a
    coroutine's wait, which awaits it and then retries its call).  One object per wait,
    not a waiter holding an answer."""

    __slots__ = ("size", "deadline")

    def __init__(self, size: int, deadline: float) -> None:
        Answer.__init__(self)
        self.size = size
        self.deadline = deadline


class Direction:
    """One side of a socket (readable or writable): who waits on it, whether the loop
    watches it, and the one timer that fires at the earliest waiter's deadline."""

    __slots__ = ("reads", "waiters", "watched", "timer", "deadline")

    def __init__(self, reads: bool) -> None:
        self.reads = reads
        self.waiters: list[Waiter] = []
        self.watched = False
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        """When ``timer`` fires."""


class FarmSocket:
    """A TCP or UDP socket of a namespace; ``sid`` is its number there."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sid: int, kind: str,
                 counters: Counters | None = None) -> None:
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
        self.counters = counters if counters is not None else Counters()
        """Its namespace's counters: traffic and failed waits are counted there too."""
        self.pending: bytes | OSError | None = None
        """What a readiness nobody waited for read (``b""``: end of stream), or the error
        it got; the next ``recv`` answers with it.  At most one read, and the watch stops
        while it is held, so a client that never reads makes the kernel hold no more."""
        self.guard: Any = None
        """The lock a handler of this socket's namespace holds, in the locked baseline
        only (None in a unicpu kernel): its readiness callbacks and timers hold it too,
        so another thread may serve a ``net.send`` or ``net.recv`` on it under that lock."""
        self._read_size = READ_AHEAD_BYTES
        self._readable = Direction(reads=True)
        self._writable = Direction(reads=False)

    # -- set-up -----------------------------------------------------------------------------

    @classmethod
    def accepted(cls, loop: asyncio.AbstractEventLoop, sid: int, sock: socket.socket,
                 counters: Counters | None = None) -> FarmSocket:
        farm_sock = cls(loop, sid, "tcp", counters)
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
        if self.pending is not None:
            raise posix(errno.EBUSY, f"socket {self.sid} holds data no recv took yet")
        self._stop(self._readable)  # a watch may outlive its waiters: end it here
        self._stop(self._writable)
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
            await self._wait(self._writable, timeout)
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

        return await self._retry(admit_and_accept, self._readable, timeout)

    def send(self, data: bytes, timeout: float) -> int | Awaitable[int]:
        """Send all of ``data``, or as much as the host took when the timeout passed.

        Waiting for the host to take everything is the backpressure: a slow peer keeps
        the caller's request in flight instead of this kernel buffering its data.  The
        count comes back at once when the host takes everything in one call (the usual
        case), else an awaitable of it.
        """
        sock = self.sock
        if sock is None or self.closed:
            sock = self.opened()
        if not data:
            return 0
        try:
            sent = sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            self.bytes_out += sent
            self.counters.bytes_out += sent
            return sent
        return self._send_rest(data, sent, self.loop.time() + timeout)

    async def _send_rest(self, data: bytes, sent: int, deadline: float) -> int:
        try:
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
                    await self._wait(self._writable, deadline - self.loop.time())
                except (TimeoutError, TryAgain):  # TryAgain: the socket is moving
                    if sent:
                        break
                    raise
                sock = self.opened()
        except OSError as exc:
            self.counters.count_failure(exc)
            raise
        self.bytes_out += sent
        self.counters.bytes_out += sent
        return sent

    def recv(self, size: int, timeout: float) -> bytes | Answer:
        """What the host has (``b""`` at end of stream) at once, else the answer the
        readiness callback gives (:mod:`kernelfarm.rpc.answer`: no future).

        What a readiness already read comes first, with no system call.  While the
        readable side is watched and nothing is pending, the host has nothing either
        (the watch would have read it), so the call waits without asking -- except in
        the locked baseline (:attr:`guard`), where another thread's loop watches and
        may not have run yet: there the host is asked, and a call that must wait on a
        thread whose loop does not watch the socket answers :data:`WAIT_AT_HOME`."""
        data = self.pending
        if data is not None:
            if type(data) is not bytes or len(data) > size:
                data = self._part_of_pending(size)
            else:
                self.pending = None
        else:
            sock = self.sock
            if sock is None or self.closed:
                sock = self.opened()
            if not self._readable.watched or self.guard is not None:
                try:
                    data = sock.recv(size)
                except (BlockingIOError, InterruptedError):
                    pass
            if data is None:
                if self.guard is not None and asyncio.get_running_loop() is not self.loop:
                    return WAIT_AT_HOME  # only the socket's own loop may watch it
                self._read_size = size if size < READ_AHEAD_BYTES else READ_AHEAD_BYTES
                return self._add_waiter(self._readable, size, timeout)
        self.bytes_in += len(data)
        self.counters.bytes_in += len(data)
        return data

    def _part_of_pending(self, size: int) -> bytes:
        """The first ``size`` bytes of ``pending`` (the rest stays), or its error."""
        pending = self.pending
        if isinstance(pending, OSError):
            self.pending = None
            raise pending
        assert pending is not None
        data, self.pending = pending[:size], pending[size:] or None
        return data

    async def sendto(self, data: bytes, address: IPAddress, port: int, timeout: float) -> int:
        sock = self.host_socket(address)
        target = (str(address), port)
        sent = await self._retry(lambda: sock.sendto(data, target), self._writable, timeout)
        self.bytes_out += sent
        self.counters.bytes_out += sent
        return sent

    async def recvfrom(self, size: int, timeout: float) -> tuple[bytes, Any]:
        sock = self.opened()
        data, address = await self._retry(lambda: sock.recvfrom(size), self._readable,
                                          timeout)
        self.bytes_in += len(data)
        self.counters.bytes_in += len(data)
        return data, address

    def shutdown(self, how: int) -> None:
        self.opened().shutdown(how)

    def close(self) -> None:
        """Close now; requests still waiting on this socket fail with ``EBADF``."""
        if self.closed:
            return
        self.closed = True
        self.pending = None
        if self.sock is not None:
            self._stop(self._readable)
            self._stop(self._writable)
            self.sock.close()
        for direction in (self._readable, self._writable):
            waiters, direction.waiters = direction.waiters, []
            for waiter in waiters:
                self._fail(waiter, posix(errno.EBADF, f"socket {self.sid} was closed"))

    # -- moving with the namespace ---------------------------------------------------------

    def park(self) -> None:
        """Its namespace leaves this kernel: stop watching the host socket and answer every
        waiting request ``TRYAGAIN``, which its client retries at the new owner.  Nothing
        was read for them, and what a readiness read ahead travels in ``state``, so nothing
        is lost; a send that got part of its data out answers that count instead
        (``sendall`` goes on with the rest)."""
        if self.sock is not None:
            self._stop(self._readable)
            self._stop(self._writable)
        for direction in (self._readable, self._writable):
            waiters, direction.waiters = direction.waiters, []
            for waiter in waiters:
                self._fail(waiter, TryAgain(f"socket {self.sid} is moving with its namespace"))

    def state(self) -> dict[str, Any]:
        """What travels with the descriptor to the kernel that takes the namespace."""
        pending = self.pending
        return {"sid": self.sid, "kind": self.kind, "listening": self.listening,
                "kept": self.kept, "tenant": self.tenant, "connecting": self.connecting,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "pending": pending if isinstance(pending, bytes) else None,
                "pending_errno": pending.errno if isinstance(pending, OSError) else None}

    @classmethod
    def moved_in(cls, loop: asyncio.AbstractEventLoop, state: dict[str, Any],
                 sock: socket.socket | None) -> FarmSocket:
        """The socket another kernel parked, from its ``state`` and host socket."""
        sid, kind, tenant = state.get("sid"), state.get("kind"), state.get("tenant")
        pending, pending_errno = state.get("pending"), state.get("pending_errno")
        if not isinstance(sid, int) or isinstance(sid, bool) or kind not in KINDS or \
                not isinstance(tenant, (str, type(None))) or \
                sock is not None and sock.type != KINDS[kind] or \
                not isinstance(pending, (bytes, type(None))) or \
                not isinstance(pending_errno, (int, type(None))):
            raise ValueError("moved socket state out of bounds")
        farm_sock = cls(loop, sid, kind)
        farm_sock.tenant = tenant
        farm_sock.listening = bool(state.get("listening"))
        farm_sock.kept = bool(state.get("kept"))
        farm_sock.connecting = bool(state.get("connecting"))
        farm_sock.pending = pending if pending_errno is None else posix(pending_errno)
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

    async def _retry(self, call: Callable[[], T], direction: Direction,
                     timeout: float) -> T:
        deadline = self.loop.time() + timeout
        while True:
            self.opened()
            try:
                return call()
            except (BlockingIOError, InterruptedError):
                pass
            await self._wait(direction, deadline - self.loop.time())

    async def _wait(self, direction: Direction, timeout: float) -> None:
        """Until the socket is ready in ``direction``; ``ETIMEDOUT`` after ``timeout``
        seconds, ``EBADF`` if it is closed meanwhile."""
        waiter = self._add_waiter(direction, 0, timeout)
        try:
            await waiter
        finally:
            if waiter in direction.waiters:  # cancelled, say: stop waiting for it now
                direction.waiters.remove(waiter)

    def _add_waiter(self, direction: Direction, size: int, timeout: float) -> Waiter:
        """A new waiter on ``direction``: settled by readiness (a ``recv`` of ``size``
        when > 0), ``ETIMEDOUT`` after ``timeout`` s, ``EBADF`` on close."""
        if timeout <= 0:
            raise posix(errno.ETIMEDOUT, f"socket {self.sid}")
        loop = self.loop
        if not direction.watched:
            watch = loop.add_reader if direction.reads else loop.add_writer
            watch(self.opened().fileno(),
                  self._wake if self.guard is None else self._guarded_wake, direction)
            direction.watched = True
        deadline = loop.time() + timeout
        waiter = Waiter(size, deadline)
        direction.waiters.append(waiter)
        timer = direction.timer
        if timer is None or direction.deadline > deadline:
            if timer is not None:
                timer.cancel()
            self._arm(direction, deadline)
        return waiter

    def _arm(self, direction: Direction, deadline: float) -> None:
        """Set ``direction``'s one timer to fire at ``deadline``."""
        expire = self._expire if self.guard is None else self._guarded_expire
        direction.timer = self.loop.call_at(deadline, expire, direction)
        direction.deadline = deadline

    def _guarded_wake(self, direction: Direction) -> None:
        """:meth:`_wake` holding :attr:`guard`: the locked baseline's readiness callback."""
        with self.guard:
            self._wake(direction)

    def _guarded_expire(self, direction: Direction) -> None:
        """:meth:`_expire` holding :attr:`guard`."""
        with self.guard:
            self._expire(direction)

    def _wake(self, direction: Direction) -> None:
        """The host says ready: settle every waiter whose call no longer blocks.

        The watch stays after the last waiter is settled, since the next request on this
        socket usually waits too.  A readiness that finds nobody waiting reads what came
        on a connected stream socket into ``pending``, once; any other such readiness
        ends the watch (the loop's watch is level-triggered: it would fire again and
        again)."""
        waiters = direction.waiters
        if not waiters:
            sock = self.sock
            assert sock is not None  # a socket that closes or leaves ends its watches
            if direction.reads and self.pending is None and self.kind == "tcp" \
                    and not self.listening:
                try:  # read ahead, here: the data path of request/response traffic
                    pending = sock.recv(self._read_size)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    self.pending = exc
                else:
                    self.pending = pending
                    if pending:
                        return
            # Nothing to read ahead for (a writable side, a listener, data held already),
            # or the end of stream or an error, which stay readable: the loop's watch is
            # level-triggered and would fire again and again.
            self._unwatch(direction)
        elif len(waiters) == 1:  # the usual case, without a new list
            if self._settle(waiters[0]):
                waiters.clear()
        else:
            direction.waiters = [waiter for waiter in waiters if not self._settle(waiter)]

    def _settle(self, waiter: Waiter) -> bool:
        """Settle ``waiter`` if the socket is ready for it; False if it must wait on."""
        if waiter.done():
            return True  # cancelled: nothing to answer
        size = waiter.size
        if not size:
            waiter.set_result(None)
            return True
        assert self.sock is not None  # closing fails the waiters first
        try:
            data = self.sock.recv(size)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # the request's answer
            self._fail(waiter, exc)
            return True
        self.bytes_in += len(data)
        self.counters.bytes_in += len(data)
        waiter.set_result(data)
        return True

    def _fail(self, waiter: Waiter, exc: Exception) -> None:
        """Fail a waiter.  A future that is a request's answer (a ``recv``) counts its
        failure here; a coroutine's wait fails the coroutine, whose caller counts it."""
        if not waiter.done():
            if waiter.size and isinstance(exc, OSError):
                self.counters.count_failure(exc)
            waiter.set_exception(exc)

    def _expire(self, direction: Direction) -> None:
        """The direction's timer: fail the waiters whose deadline passed, then set the
        timer for the earliest of the others."""
        direction.timer = None
        now = self.loop.time() + TIMER_SLACK_S
        waiters = direction.waiters
        if any(waiter.deadline <= now for waiter in waiters):
            direction.waiters = [waiter for waiter in waiters if waiter.deadline > now]
            for waiter in waiters:
                if waiter.deadline <= now:
                    self._fail(waiter, posix(errno.ETIMEDOUT, f"socket {self.sid}"))
        if direction.waiters:
            self._arm(direction, min(waiter.deadline for waiter in direction.waiters))

    def _unwatch(self, direction: Direction) -> None:
        if not direction.watched:
            return
        direction.watched = False
        assert self.sock is not None
        if direction.reads:
            self.loop.remove_reader(self.sock.fileno())
        else:
            self.loop.remove_writer(self.sock.fileno())

    def _stop(self, direction: Direction) -> None:
        """No watch and no timer left on ``direction`` (the socket closes or leaves)."""
        self._unwatch(direction)
        if direction.timer is not None:
            direction.timer.cancel()
            direction.timer = None


def _no_delay(sock: socket.socket) -> None:
    """Each ``net.send`` is a whole application write, already batched by the caller:
    Nagle's delay would only add a round trip to request/response traffic."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

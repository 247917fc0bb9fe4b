"""A waiting call's answer, handed by whoever settles it straight to the connection.

A call that must wait (a ``net.recv`` of data not there yet) could return an asyncio
future: the connection then watches it with a done callback, which the loop runs one turn
after the future is settled, and only that callback queues the reply.  An :class:`Answer`
costs less: once a connection has taken it (:meth:`Answer.deliver_to`), the code that
settles it (a socket's readiness callback) hands the result to
:meth:`Sink.answered` in the same call -- no future, no callback closure, no extra loop
turn (about 0.7 µs of a round trip, benchmarks/README.md).

Anyone else may still ``await`` it (a test, a handler run on another thread's loop in the
locked baseline): the first ``await`` makes a future on the running loop then.

An answer nobody wants any more -- its connection closed, or the task that awaited it was
cancelled -- is :meth:`~Answer.done`, as a cancelled future is: whoever would settle it
must not spend anything on it (a socket must not consume data for it).
"""

from __future__ import annotations

import asyncio
from typing import Any, Generator, Protocol


class Sink(Protocol):
    """Where an answer goes: a server connection (or, in the locked baseline, the hop
    back to the thread whose connection asked, ``kernel.locked.ReturnTrip``)."""

    @property
    def closed(self) -> bool:
        """Nobody wants the answer any more."""
        ...

    def answered(self, msgid: int, reserve: int, result: Any,
                 error: BaseException | None) -> None:
        """Reply to call ``msgid`` (``error`` if not None, else ``result``) and give back
        the ``reserve`` bytes it held in the connection's account."""
        ...


class Answer:
    """The answer of one waiting call: settled once, by :meth:`set_result` or
    :meth:`set_exception` (the names a future has).  A socket's waiter is one
    (``kernelfarm.net.sockets.Waiter``, a subclass): tell answers by ``isinstance``."""

    __slots__ = ("_sink", "_msgid", "_reserve", "_future", "_settled", "_result", "_error")

    def __init__(self) -> None:
        self._sink: Sink | None = None
        self._msgid = 0
        self._reserve = 0
        self._future: asyncio.Future[Any] | None = None
        self._settled = False
        self._result: Any = None
        self._error: BaseException | None = None

    def deliver_to(self, sink: Sink, msgid: int, reserve: int) -> None:
        """Send the answer to ``sink`` as call ``msgid`` when it is settled (at once if it
        already is); ``reserve``: the reply bytes the call holds in ``sink``'s account."""
        self._sink, self._msgid, self._reserve = sink, msgid, reserve
        if self._settled:
            sink.answered(msgid, reserve, self._result, self._error)

    def done(self) -> bool:
        """Settled, or wanted by nobody any more (see the module's docstring)."""
        if self._settled:
            return True
        sink = self._sink
        if sink is not None:
            return sink.closed
        future = self._future
        return future is not None and future.done()

    def set_result(self, result: Any) -> None:
        # The data path (a readiness settling a delivered recv) in this one frame; the
        # rest as set_exception.
        sink = self._sink
        if sink is not None and not self._settled:
            self._settled = True
            sink.answered(self._msgid, self._reserve, result, None)
            return
        self._settle(result, None)

    def set_exception(self, error: BaseException) -> None:
        self._settle(None, error)

    def _settle(self, result: Any, error: BaseException | None) -> None:
        if self._settled:
            return
        self._settled = True
        sink = self._sink
        if sink is not None:
            sink.answered(self._msgid, self._reserve, result, error)
            return
        self._result, self._error = result, error
        future = self._future
        if future is not None and not future.done():
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)

    def __await__(self) -> Generator[Any, None, Any]:
        if not self._settled:
            if self._future is None:
                self._future = asyncio.get_running_loop().create_future()
            return (yield from self._future.__await__())
        if self._error is not None:
            raise self._error
        return self._result

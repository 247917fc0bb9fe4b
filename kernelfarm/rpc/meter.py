"""What a server counts about its own traffic: per read and per reply batch, never per request.

A kernel's fast path is measured in hundreds of nanoseconds, so the latency histogram is
kept per *batch*: the requests decoded from one read are served together, and the time from
the first decode to the replies being handed over is added once, with the batch's size as
its weight, to one bucket found by a C ``bisect``.  With a pipelining client that is a few
tens of nanoseconds per request; with one request per read it is one ``perf_counter`` pair.
The figure is service time in the kernel (it excludes queueing in the socket and a group
commit's fsync, which the kernel times separately).  Counters only grow; the supervisor
reads them over the control channel (``kernel.stats``) and exports them.
"""

from __future__ import annotations

from typing import Any

LATENCY_BOUNDS: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0)
"""Upper bounds (seconds) of the latency buckets; one more bucket holds the rest (+Inf)."""


class Meter:
    """Byte counters and the batch latency histogram of every connection of one server.

    Counted by the server's read path itself (``ServerConnection.data_received``: a batch's
    time goes to ``buckets[bisect_left(LATENCY_BOUNDS, seconds)]``, weighted by its
    requests, and to ``seconds``), not through a method: a call per read is a Python frame.
    """

    __slots__ = ("bytes_in", "bytes_out", "buckets", "seconds")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        self.buckets = [0] * (len(LATENCY_BOUNDS) + 1)
        self.seconds = 0.0

    def snapshot(self) -> dict[str, Any]:
        return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "latency": {"bounds": list(LATENCY_BOUNDS), "counts": list(self.buckets),
                            "sum": self.seconds}}


class Usage:
    """What one tenant's connections cost a server: requests answered, errors, bytes.

    Kept in the tenant's session (shared by its connections) and counted per read and
    per batch of replies, like :class:`Meter`; errors on the error path only.
    """

    __slots__ = ("ops", "errors", "bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.ops = 0
        self.errors = 0
        self.bytes_in = 0
        self.bytes_out = 0

    def report(self) -> dict[str, int]:
        return {"ops": self.ops, "errors": self.errors, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out}

    def __bool__(self) -> bool:
        return bool(self.ops or self.errors or self.bytes_in or self.bytes_out)

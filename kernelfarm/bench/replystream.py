"""The replies a load connection expects next, laid out as one byte string.

A load connection keeps one request in flight per slot (slot ``s`` always with msgid
``s``), each slot cycling through its own chain of requests, and sends a slot's next
request as soon as its reply is read, in the order the replies came.  A server that answers
a connection in request order (a kernel does for every call that does not wait) therefore
sends a periodic stream: the slots in flight in their send order, each one step further
along its chain per round.  When every reply of every chain has a known byte form (the
encoded expected result, or the bytes of the last reply that passed the checks), the
stream is known in advance: a whole read of replies is checked by one comparison at C
speed (``expected.startswith(data, offset)``), and the requests those replies release
are one slice of the parallel stream of requests (``follow``).

A period and one more round are laid out, so any read that starts within the period and
holds no more replies than there are slots (all a server can owe) lies inside ``expected``.  A
read that does not match, whatever the reason (a reply out of order, an error, a
different result, a broken server), is parsed reply by reply instead; see
:mod:`kernelfarm.bench.loadclient`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAX_PERIOD_REPLIES = 4096
"""Chains whose lengths make the period longer than this are parsed, never laid out."""


@dataclass(frozen=True, slots=True)
class ReplyStream:
    """A period of expected replies and one more round, and the request each releases.

    Entry ``j`` is the ``j``-th reply from where the stream was laid out: it answers slot
    ``slots[j]`` at chain position ``positions[j]``, ends at byte ``ends[j]`` of
    ``expected``, and releases the request at ``follow[follow_starts[j]:follow_starts[j + 1]]``.
    """

    expected: bytes
    ends: list[int]
    follow: bytes
    follow_starts: list[int]
    slots: list[int]
    positions: list[int]
    period_bytes: int
    period_entries: int

    def start_of(self, entry: int) -> int:
        """Where entry ``entry``'s reply starts in ``expected``."""
        return self.ends[entry - 1] if entry else 0


def lay_out(order: Sequence[int], positions: Sequence[int],
            requests: Sequence[Sequence[bytes]],
            replies: Sequence[Sequence[bytes | None]]) -> ReplyStream | None:
    """The stream that follows when the slots of ``order`` are in flight in that order,
    slot ``s`` at chain position ``positions[s]``.  None when a reply is not known yet or
    the period would pass :data:`MAX_PERIOD_REPLIES`."""
    if not order:
        return None
    rounds = math.lcm(*(len(requests[slot]) for slot in order))
    if rounds * len(order) > MAX_PERIOD_REPLIES:
        return None
    expected: list[bytes] = []
    follow: list[bytes] = []
    slots: list[int] = []
    at: list[int] = []
    for step in range(rounds + 1):
        for slot in order:
            chain = requests[slot]
            position = (positions[slot] + step) % len(chain)
            reply = replies[slot][position]
            if reply is None:
                return None
            expected.append(reply)
            follow.append(chain[(position + 1) % len(chain)])
            slots.append(slot)
            at.append(position)
    ends = _cumulative(expected)
    period_entries = rounds * len(order)
    return ReplyStream(expected=b"".join(expected), ends=ends[1:], follow=b"".join(follow),
                       follow_starts=_cumulative(follow), slots=slots, positions=at,
                       period_bytes=ends[period_entries], period_entries=period_entries)


def _cumulative(pieces: Sequence[bytes]) -> list[int]:
    """``[0, len(p0), len(p0) + len(p1), ...]``."""
    offsets = [0]
    total = 0
    for piece in pieces:
        total += len(piece)
        offsets.append(total)
    return offsets

"""In-process harness for the fs subsystem: a fake kernel that runs requests in turns.

Each call goes through the steps a kernel takes: params and results are round-tripped
through msgpack (handlers see wire types), the method's partition key function runs, the
handler runs, then the turn's group commit calls every requested flush before the reply
is "sent"; exceptions are encoded with :func:`kernelfarm.errors.to_wire` and decoded as a
client would, so tests see ``FileNotFoundError`` and friends with the wire's errno.
"""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path
from typing import Any

import msgpack
import msgspec

from kernelfarm.config import Config, build
from kernelfarm.errors import Refusal, from_wire, to_wire
from kernelfarm.client import FsApi
from kernelfarm.fs.subsystem import FsSubsystem
from kernelfarm.kernel.commit import Flush, GroupCommit, run_flushes
from kernelfarm.kernel.subsystem import Method


def wire(obj: Any) -> Any:
    """``obj`` as a client gets it: encoded as a kernel's replies are (results may be
    already encoded), decoded as a client decodes."""
    return msgpack.unpackb(msgspec.msgpack.encode(obj), raw=False)


class FakeKernel:
    """The :class:`~kernelfarm.kernel.subsystem.KernelContext` of one fs subsystem."""

    def __init__(self, data_dir: Path, loop: asyncio.AbstractEventLoop | None = None,
                 slots: set[int] | None = None, **fs_settings: Any) -> None:
        self.kernel_id = 0
        self.slots = slots  # None: every slot is ours
        self.data_dir = data_dir
        # None: no loop, as in a locked kernel's inline paths (snapshots written inline)
        self.loop: asyncio.AbstractEventLoop = loop  # type: ignore[assignment]  # see above
        self.farm_endpoints: tuple[tuple[str, int], ...] = ()
        self.fs_settings = fs_settings
        self.config: Config = build({"fs": fs_settings})
        # The kernel's group commit; turn() ends each turn itself, so only a flush asked
        # for outside a turn (the batch policy's timer) is scheduled, on the loop if any.
        self.group_commit = GroupCommit(
            (lambda commit: None) if loop is None else loop.call_soon, self._run_flushes)
        self.flush_calls = 0
        self.start()

    def start(self) -> None:
        self.fs = FsSubsystem(self)
        self.methods: dict[str, Method] = {m.name: m for m in self.fs.methods()}
        for slot in self.slots_on_disk():
            if self.owns(slot):
                self.fs.load_slots([slot])
        self.api = FsApi(self.call, lambda method, *params: [self.call(method, *params)])

    def slots_on_disk(self) -> list[int]:
        try:
            return sorted(int(name) for name in os.listdir(self.data_dir / "fs"))
        except FileNotFoundError:
            return []

    # -- KernelContext --------------------------------------------------------------------

    def owns(self, slot: int) -> bool:
        return self.slots is None or slot in self.slots

    def request_flush(self, flush: Flush) -> None:
        self.group_commit.request(flush)

    # -- turns ----------------------------------------------------------------------------

    def turn(self, requests: list[tuple[Any, ...]]) -> list[Any]:
        """Handle several requests in one loop turn: one group commit for all of them.

        Returns each request's result, or the exception a client would raise.
        """
        replies: list[Any] = []
        for method, *params in requests:
            entry = self.methods[method]
            params = wire(params)
            try:
                if entry.key is not None:
                    entry.key(params)
                result = entry.handler(*params)
                if type(result) is Refusal:  # an expected miss, answered without raising
                    replies.append(("error", result.error))
                else:
                    replies.append(("ok", result))
            except Exception as exc:
                replies.append(("error", to_wire(exc)))
        try:
            self.commit()
        except Exception as exc:  # the kernel would exit: no reply is acknowledged
            replies = [("error", to_wire(exc))] * len(replies)
        return [wire(value) if kind == "ok" else from_wire(wire(value))
                for kind, value in replies]

    def call(self, method: str, *params: Any) -> Any:
        (reply,) = self.turn([(method, *params)])
        if isinstance(reply, Exception):
            raise reply
        return reply

    def commit(self) -> None:
        self.group_commit.commit_now()

    def _run_flushes(self, flushes: list[Flush]) -> None:
        """As the kernel's, but a failure raises (the kernel would exit) and is counted."""
        self.flush_calls += len(flushes)
        run_flushes(flushes)

    def errno_of(self, *call: Any) -> int | None:
        """The errno a call (``method, *params``) fails with on the wire, or None when it
        succeeds."""
        (reply,) = self.turn([call])
        if isinstance(reply, OSError):
            return reply.errno
        if isinstance(reply, Exception):
            raise reply
        return None

    def restart(self) -> None:
        """A clean stop and a new kernel on the same data dir (recovery from disk)."""
        self.fs.close()
        self.start()

    def crash(self) -> None:
        """Forget everything in memory without flushing, as ``kill -9`` would."""
        for volume in self.fs.volumes.values():
            volume.journal.discard()
        self.start()

    def close(self) -> None:
        self.fs.close()


def errname(code: int | None) -> str | None:
    return None if code is None else errno.errorcode[code]

"""Sync-behind: a kernel's ``fdatasync`` runs in a child process while its loop serves on.

A kernel with ``fsync = "always"`` used to call ``fdatasync`` on its loop at the end of
every turn: about 100 us on a quiet ext4 (milliseconds on a busy disk) in which the
kernel could do nothing else.  Measured under ``benchmarks/peers.py``'s write_file, the
kernel's core was busy 12-14% of the time at load 8 -- the rest it waited on the disk.
A thread would overlap the wait, but the fast path starts no thread; so each unicpu
kernel forks one small syncer at boot, before its loop exists.  The group commit
(:mod:`kernelfarm.kernel.commit`) sends it the journals' descriptors of a written group
(``SCM_RIGHTS``: the child gets the same open files, so the write errors the kernel's
descriptors would see are the ones it sees), the child runs ``fdatasync`` on them and answers
with the first errno (0: all synced).  Meanwhile the loop decodes, applies and journals
the next requests and sends their group too, without waiting: requests queue in the
socket.  The child takes every request waiting when it is free, syncs each file they name
once (a request read before the ``fdatasync`` began was sent after its group's write, so
the sync covers it), and answers each; the disk never waits for the kernel's loop to come
round.

The child also runs the journals' page-cache drops (:data:`.fs.journal.dropper`): a
:data:`DROP` request carries one journal's descriptor and how far to write it back and
drop; it is never answered, and the child runs it after answering its batch's syncs.  On
the loop the writeback it starts waited on the disk for 2-7 ms per 16 MiB streamed
(benchmarks/README.md, "The write path, sixth pass").

The syncer never outlives its kernel: ``PR_SET_PDEATHSIG`` kills it when the kernel dies,
and EOF on its socket ends it when the kernel closes it.  A syncer that dies is a kernel
that can no longer promise durability (did its last ``fdatasync`` see an error?): the
group commit is told (:data:`GONE`) and the kernel exits as after a failed fsync, and the
supervisor restarts it.
"""

from __future__ import annotations

import array
import asyncio
import ctypes
import gc
import logging
import os
import select
import signal
import socket
import struct
from collections import deque
from time import perf_counter
from typing import Callable, Sequence

from kernelfarm.fs import journal

log = logging.getLogger(__name__)

REQUEST = struct.Struct("<I")
"""A sync request: how many descriptors came with it (they travel as ``SCM_RIGHTS``)."""
DROP = struct.Struct("<Q")
"""A drop request: the bytes of its one descriptor's file to write back and drop from the
page cache, from the start (:func:`.fs.journal.drop_cached`); told apart from a sync
request by its size, never answered."""
ANSWER = struct.Struct("<I")
"""The answer to one request: 0 when every descriptor was synced, else the first errno
(one message carries the answers of every request synced together, in order)."""
MAX_FDS = 250
"""Descriptors per request (Linux takes at most 253 in one ``SCM_RIGHTS`` message)."""
MAX_BATCH = 4096
"""Requests the child syncs together at most (their answers make one message)."""
PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15
NAME = b"kf-syncer"
GONE = -1
"""What ``on_done`` is told when the syncer died (EOF or a broken answer)."""


def _take(sock: socket.socket, flags: int = 0) -> tuple[bytes, list[int]] | None:
    """One request and its descriptors; ``None`` at EOF.  (``socket.recv_fds`` of Python
    3.11 drops its ``flags``: MSG_DONTWAIT would block.)"""
    fds = array.array("i")
    data, ancdata, _flags, _addr = sock.recvmsg(
        max(REQUEST.size, DROP.size), socket.CMSG_SPACE(MAX_FDS * fds.itemsize), flags)
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return (data, list(fds)) if data else None


def _serve(sock: socket.socket) -> None:
    """The child: take every waiting request, ``fdatasync`` each file the sync requests
    name once, answer each (its first errno, 0 if none), then run the drop requests,
    until EOF."""
    while True:
        first = _take(sock)
        if first is None:
            return
        batch = [first]
        while len(batch) < MAX_BATCH:
            try:
                more = _take(sock, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if more is None:
                return
            batch.append(more)
        results: dict[tuple[int, int], int] = {}  # file -> errno of its one fdatasync
        answers = []
        drops = []
        for data, fds in batch:
            if len(data) == DROP.size:
                drops.append((fds, DROP.unpack(data)[0]))
                continue
            error = 0
            for fd in fds:
                try:
                    st = os.fstat(fd)
                    key = (st.st_dev, st.st_ino)
                    if key not in results:
                        try:
                            os.fdatasync(fd)
                            results[key] = 0
                        except OSError as exc:
                            results[key] = exc.errno or 5
                    error = error or results[key]
                finally:
                    os.close(fd)
            answers.append(error)
        if answers:  # an empty message would read as EOF: the syncer gone
            sock.send(b"".join(ANSWER.pack(error) for error in answers))
        for fds, end in drops:
            for fd in fds:
                journal.drop_cached(fd, end)
                os.close(fd)


def _child(sock: socket.socket, parent: int) -> None:
    """Set up the forked child: no descriptor but its socket, dies with the kernel."""
    try:
        gc.disable()  # nothing it allocates cycles; pages stay shared with the kernel
        # Stops are its kernel's to make: SIGINT and SIGTERM sent to the whole process
        # group (Ctrl-C, `kill -TERM -PGID`, a container runtime's stop) must not end the
        # syncer before its kernel has stopped cleanly, or the kernel takes the lost
        # syncer for a failed fsync and exits unacknowledged.  It ends by EOF when its
        # kernel closes it, by PR_SET_PDEATHSIG when the kernel dies, or by SIGKILL.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(NAME), 0, 0, 0)
        if os.getppid() != parent:  # the kernel died before PDEATHSIG was set
            return
        keep = sock.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 20)
        _serve(sock)
    except BaseException:  # noqa: BLE001 - a child never returns into the kernel's code
        pass


class Syncer:
    """The kernel's side of its syncer: start a sync, learn on the loop when it ended.

    ``on_done(errno)`` is called from the loop (``add_reader``) when the sync in flight
    ended; ``errno`` is 0 when every descriptor was synced, :data:`GONE` if the syncer
    died.
    """

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self._on_done: Callable[[int], None] = lambda error: None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._groups: deque[list[float]] = deque()
        """Groups sent and not answered, oldest first: [requests left, worst errno,
        when sent]."""
        self.syncs = 0
        """Groups synced (each one or more journals made durable in the child)."""
        self.sync_fds = 0
        """Descriptors synced over all of them."""
        self.sync_seconds = 0.0
        """Wall time from sending each group to its answer (the kernel served meanwhile)."""

    @classmethod
    def fork(cls) -> Syncer:
        """Fork the syncer.  Call before the event loop exists (nothing of it is copied
        into the child, which only runs :func:`_serve`)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child (its coverage is the tests' syncs)
            ours.close()
            _child(theirs, parent)
            os._exit(0)
        theirs.close()
        return cls(pid, ours)

    @property
    def busy(self) -> bool:
        """Whether a group sent is not answered yet."""
        return bool(self._groups)

    def watch(self, loop: asyncio.AbstractEventLoop, on_done: Callable[[int], None]) -> None:
        """Report each synced group to ``on_done``, from ``loop``'s reader callback; and
        from now on run this process's journal page-cache drops (:meth:`drop_behind`)."""
        self._on_done = on_done
        self._loop = loop
        loop.add_reader(self._sock, self._answered)
        journal.dropper = self.drop_behind

    def drop_behind(self, fd: int, end: int) -> None:
        """Have the child write back bytes 0 to ``end`` of ``fd``'s file and drop them
        from the page cache (:func:`.fs.journal.drop_cached`), unanswered.  If it cannot
        be sent now (the socket full behind a slow sync, or the syncer gone), it is run
        here."""
        try:
            socket.send_fds(self._sock, [DROP.pack(end)], [fd], socket.MSG_DONTWAIT)
        except OSError:
            journal.drop_cached(fd, end)

    def start(self, fds: Sequence[int]) -> None:
        """Send a group's ``fds`` to be synced, behind any group sent before (the child
        gets its own references: the caller may close its descriptors at once)."""
        requests = 0
        for at in range(0, len(fds), MAX_FDS):
            chunk = list(fds[at:at + MAX_FDS])
            socket.send_fds(self._sock, [REQUEST.pack(len(chunk))], chunk)
            requests += 1
        self._groups.append([requests, 0, perf_counter()])
        self.sync_fds += len(fds)

    def _answered(self) -> None:
        """Every answer the child has sent; each group ends with its last request's."""
        while self._groups:
            try:
                data = self._sock.recv(ANSWER.size * MAX_BATCH, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return  # nothing (more) to read: the loop or wait() took it already
            except OSError as exc:
                data = b""
                log.critical("reading the syncer's answer failed: %s", exc)
            if not data or len(data) % ANSWER.size:
                self._groups.clear()
                self._on_done(GONE)
                return
            for (error,) in ANSWER.iter_unpack(data):
                group = self._groups[0]
                group[0] -= 1
                group[1] = group[1] or error
                if group[0] == 0:
                    self._groups.popleft()
                    self.syncs += 1
                    self.sync_seconds += perf_counter() - group[2]
                    self._on_done(int(group[1]))
        if not self._groups:  # idle: only EOF can be waiting (the syncer died)
            try:
                if self._sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                    self._on_done(GONE)
            except BlockingIOError:
                pass

    def wait(self) -> None:
        """Block until every group sent is synced (each reported to ``on_done`` as
        usual): for a commit that must finish now, before state leaves the kernel."""
        while self._groups:
            select.select([self._sock], [], [])
            self._answered()

    def close(self) -> None:
        """End the child and reap it, once the last sync has ended.  Killed, not only
        told by EOF: a snapshot child forked meanwhile may hold a copy of the socket."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock)
        self._loop = None
        if journal.dropper == self.drop_behind:
            journal.dropper = journal.drop_cached
        self._sock.close()
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass  # already gone and reaped

"""A locked kernel's threads are judged one by one: a hung one is found beside working ones.

The heartbeat is answered by the main thread; the other serving threads' loops are probed
at each ping (``kernel/loopwatch.py``), and a thread that is silent is judged on its own
activity (``supervisor/activity.py``), never on the process's.  The kernels run through
``hanging_kernel.py``: ``kernel.stats`` says which thread served it and can deadlock it.
"""

from __future__ import annotations

from pathlib import Path

import msgpack

from farmctl import Farm, gone, start_farm, wait_until
from hanging_kernel import ENTRY
from rawpeer import Peer

HEARTBEAT = "[supervisor]\nheartbeat_interval = 0.1\nheartbeat_timeout = 0.5\n"
LOCKED = ("--mode", "locked", "--threads", "2")


def served_by(farm: Farm, main: bool, besides: int = 0) -> tuple[Peer, int]:
    """A connection to the kernel that its main thread serves (``main``), or another
    thread than ``besides``; and that thread's id.  Which thread accepts a connection is
    the host's choice: connect until one of the kind asked for does."""
    (kernel,) = farm.cluster_map()["kernels"]
    found: list[tuple[Peer, int]] = []

    def connect() -> bool:
        peer = Peer(tuple(kernel["addr"]))
        served = peer.call(1, "kernel.stats")[3]
        if served["main"] is main and served["tid"] != besides:
            found.append((peer, served["tid"]))
            return True
        peer.close()
        return False

    wait_until(connect, what=f"a connection served by the {'main' if main else 'other'} thread")
    return found[0]


def replaced(farm: Farm, pid: int) -> bool:
    (kernel,) = farm.cluster_map()["kernels"]
    return kernel["pid"] != pid and kernel["state"] == "running" and gone(pid)


def test_a_hung_serving_thread_beside_the_heartbeat_is_found_and_replaced(
        tmp_path: Path) -> None:
    with start_farm(tmp_path, 1, *LOCKED, config_text=HEARTBEAT, entry=ENTRY) as farm:
        pid = farm.kernel_pids()[0]
        peer, tid = served_by(farm, main=False)
        assert peer.call(2, "kernel.stats", True)[2] is None  # then that thread deadlocks
        wait_until(lambda: replaced(farm, pid), what="the kernel with a hung thread replaced")
        assert f"its serving thread {tid} has not turned its loop" in farm.log()
        peer.close()
        fresh, _ = served_by(farm, main=False)  # the new kernel serves on every thread
        fresh.close()


def test_a_hung_main_thread_is_found_while_another_thread_works(tmp_path: Path) -> None:
    """The other thread keeps serving a client (it comes back from its waits all the
    time): that is no sign of life of the main thread, which is deadlocked."""
    with start_farm(tmp_path, 1, *LOCKED, config_text=HEARTBEAT, entry=ENTRY) as farm:
        pid = farm.kernel_pids()[0]
        worker, _ = served_by(farm, main=False)
        main, _ = served_by(farm, main=True)
        assert main.call(2, "kernel.stats", True)[2] is None

        def replaced_while_the_other_works() -> bool:
            try:
                worker.call(3, "kernel.stats")
            except OSError:
                pass  # the kernel is gone
            return replaced(farm, pid)

        wait_until(replaced_while_the_other_works, what="the kernel with a hung main thread "
                                                        "replaced")
        assert "did not answer its heartbeat" in farm.log()
        worker.close()
        main.close()


def test_a_serving_thread_held_by_a_long_turn_of_work_is_not_killed(tmp_path: Path) -> None:
    """As ``test_a_kernel_held_by_a_long_turn_of_work_is_not_killed_as_hung``, on a
    locked kernel's other thread: one request's ``fsync``s grow until they hold that
    thread's loop past ``heartbeat_timeout`` (the log says so); the thread is busy, not
    hung, and the kernel stays."""
    with start_farm(tmp_path, 1, *LOCKED, config_text=HEARTBEAT, entry=ENTRY) as farm:
        pid = farm.kernel_pids()[0]
        peer, tid = served_by(farm, main=False)
        fsyncs = 100
        while f"loop of its thread {tid}" not in farm.log():
            assert fsyncs <= 12800, "no request held the thread's loop past the timeout"
            reply = peer.call(2, "kernel.stats", False, fsyncs)
            assert reply is not None, "the kernel was killed while it worked"
            assert reply[2] is None, reply
            fsyncs *= 2
        assert "but is not hung" in farm.log() and "killing it" not in farm.log()
        assert farm.kernel_pids() == [pid]
        peer.close()


def wait_behind_a_long_step(farm: Farm, waiter_is_main: bool, logged: str) -> None:
    """One serving thread holds the kernel's table lock through a long call (its
    ``fsync``s grow until it outlasts the timeout), another (the main one, or not) waits
    for that lock, showing no work of its own, until the log says ``logged`` (with the
    holder's thread id for ``{holder}``); the kernel must stay."""
    pid = farm.kernel_pids()[0]
    holder, holder_tid = served_by(farm, main=False)
    waiter, _ = served_by(farm, main=waiter_is_main, besides=holder_tid)
    busy = farm.data_dir / "busy"  # where the holder's fsyncs append (hanging_kernel.py)
    fsyncs = 100
    while logged.format(holder=holder_tid) not in farm.log():
        assert fsyncs <= 12800, "nothing waited for the lock past the timeout"
        before = busy.stat().st_size if busy.exists() else 0
        holder.send(msgpack.packb([0, 3, "kernel.stats", [False, fsyncs]]))
        # The waiter asks once the holder has the lock, not before it (it would not wait).
        wait_until(lambda: busy.exists() and busy.stat().st_size > before,
                   what="the holder to start its fsyncs")
        waiter.send(msgpack.packb([0, 4, "kernel.stats", []]))
        for peer in (holder, waiter):
            reply = peer.next_message()
            assert reply is not None, "the kernel was killed while it worked"
            assert reply[2] is None, reply
        fsyncs *= 2
    assert "killing it" not in farm.log()
    assert farm.kernel_pids() == [pid]
    holder.close()
    waiter.close()


def test_a_thread_waiting_for_a_working_one_is_not_killed(tmp_path: Path) -> None:
    """Two other threads: one holds the kernel's table lock through a long call, the
    other waits for that lock; the working thread vouches for it, and the kernel stays.
    (A hung thread beside threads that are not stalled is still found: the tests above.)"""
    with start_farm(tmp_path, 1, "--mode", "locked", "--threads", "3", config_text=HEARTBEAT,
                    entry=ENTRY) as farm:
        wait_behind_a_long_step(farm, False, "waiting for its thread {holder}")


def test_the_main_thread_waiting_for_a_working_one_is_not_killed(tmp_path: Path) -> None:
    """As above, with the main thread as the waiter: it serves clients too, and while it
    waits for the lock it cannot answer the heartbeat.  The thread in the middle of a
    step that works vouches for it."""
    with start_farm(tmp_path, 1, "--mode", "locked", "--threads", "2", config_text=HEARTBEAT,
                    entry=ENTRY) as farm:
        wait_behind_a_long_step(
            farm, True, "heartbeat for 0.5 s but is not hung (waiting for its thread {holder}")

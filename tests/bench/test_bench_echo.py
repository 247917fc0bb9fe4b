"""The echo servers: msgpack-rpc replies, bad input, one thread, and clean process exits."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import msgpack
import psutil
import pytest

from kernelfarm.bench.echo import EchoProcess, bind_loopback, running_echo

DEADLINE_S = 15.0


def read_replies(sock: socket.socket, count: int) -> list[object]:
    unpacker = msgpack.Unpacker(raw=False)
    replies: list[object] = []
    sock.settimeout(DEADLINE_S)
    while len(replies) < count:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(replies)} of {count} replies"
        unpacker.feed(chunk)
        replies.extend(unpacker)
    return replies


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pid: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while running(pid):
        assert time.monotonic() < deadline, f"process {pid} still running"
        time.sleep(0.02)  # polling a condition under a deadline


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoProcess]:
    with running_echo() as server:
        yield server


def test_replies_carry_the_first_param_and_answer_a_whole_batch(echo: EchoProcess) -> None:
    batch = b"".join([
        msgpack.packb([0, 1, "echo", ["hello"]]),
        msgpack.packb([0, 2, "fs.stat", [b"\x00\xff", 2]]),
        msgpack.packb([0, 3, "anything", []]),
    ])
    with socket.create_connection(echo.address) as sock:
        sock.sendall(batch)
        assert read_replies(sock, 3) == [
            [1, 1, None, "hello"], [1, 2, None, b"\x00\xff"], [1, 3, None, None]]


def test_requests_split_across_writes_are_reassembled(echo: EchoProcess) -> None:
    data = msgpack.packb([0, 7, "echo", [list(range(1000))]])
    with socket.create_connection(echo.address) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(data), 100):
            sock.sendall(data[i:i + 100])
        assert read_replies(sock, 1) == [[1, 7, None, list(range(1000))]]


def test_malformed_requests_get_eproto_and_notifications_no_reply(echo: EchoProcess) -> None:
    with socket.create_connection(echo.address) as sock:
        sock.sendall(b"".join([
            msgpack.packb([2, "note", [1]]),          # notification: no reply
            msgpack.packb([0, 5, "short"]),           # 3 elements with a msgid
            msgpack.packb([0, 6, "bad", 17]),         # params not a list
            msgpack.packb("not a message"),           # nothing to answer
            msgpack.packb([0, 8, "echo", ["still served"]]),
        ]))
        replies = read_replies(sock, 3)
    assert [reply[1] for reply in replies] == [5, 6, 8]  # type: ignore[index]
    assert replies[0][2]["code"] == "EPROTO"  # type: ignore[index]
    assert replies[1][2]["code"] == "EPROTO"  # type: ignore[index]
    assert replies[2] == [1, 8, None, "still served"]


def test_an_undecodable_stream_closes_only_that_connection(echo: EchoProcess) -> None:
    with socket.create_connection(echo.address) as bad:
        bad.sendall(msgpack.packb([0, 1, "echo", [1]]) + b"\xc1")  # 0xc1: never used
        bad.settimeout(DEADLINE_S)
        data = b""
        while chunk := bad.recv(65536):
            data += chunk
        assert msgpack.unpackb(data) == [1, 1, None, 1]  # answered, then closed
    with socket.create_connection(echo.address) as good:
        good.sendall(msgpack.packb([0, 2, "echo", [2]]))
        assert read_replies(good, 1) == [[1, 2, None, 2]]


def test_the_server_process_stays_at_one_thread(echo: EchoProcess) -> None:
    with socket.create_connection(echo.address) as sock:
        sock.sendall(msgpack.packb([0, 1, "echo", [1]]))
        read_replies(sock, 1)
        assert psutil.Process(echo.pid).num_threads() == 1


def test_byte_echo_returns_every_byte() -> None:
    payload = os.urandom(200_000)
    with running_echo("bytes") as server, socket.create_connection(server.address) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(DEADLINE_S)
        received = b""
        while len(received) < len(payload) and (chunk := sock.recv(65536)):
            received += chunk
        assert received == payload


def test_sigterm_stops_the_server() -> None:
    with running_echo() as server:
        process = psutil.Process(server.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE_S) == 0


def test_the_server_exits_when_its_parent_dies() -> None:
    # A middle process starts the server and prints its pid; killing the middle one
    # orphans the server, which must notice and exit by itself.
    with subprocess.Popen(
            [sys.executable, "-c",
             "import subprocess, sys\n"
             "p = subprocess.Popen([sys.executable, '-m', 'kernelfarm.bench.echo',"
             " '--print-port'], stdout=subprocess.PIPE)\n"
             "p.stdout.readline()\n"
             "print(p.pid, flush=True)\n"
             "sys.stdin.read()\n"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as middle:
        try:
            assert middle.stdout is not None
            server_pid = int(middle.stdout.readline())
            assert psutil.Process(server_pid).ppid() == middle.pid
        finally:
            middle.kill()
    wait_gone(server_pid)


def test_port_fd_reports_the_port_through_a_pipe() -> None:
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-m", "kernelfarm.bench.echo", "--port-fd", str(write_end)],
        pass_fds=[write_end])
    os.close(write_end)
    try:
        with os.fdopen(read_end) as reader:
            port = int(reader.readline())
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(msgpack.packb([0, 9, "echo", ["via fd"]]))
            assert read_replies(sock, 1) == [[1, 9, None, "via fd"]]
    finally:
        process.terminate()
        assert process.wait(DEADLINE_S) == 0


def test_only_loopback_addresses_are_bound() -> None:
    with pytest.raises(ValueError, match="loopback"):
        bind_loopback("0.0.0.0")

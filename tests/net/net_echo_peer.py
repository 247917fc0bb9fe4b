"""A real peer process for the net tests: a TCP echo server on 127.0.0.1, port 0.

Prints its port on one line, then echoes every connection until the client half-closes,
half-closes back and closes.  Exits when its stdin closes, so it never outlives the test
that started it.  (Threads are fine here: this is the test's peer, not a kernel.)
"""

from __future__ import annotations

import socket
import sys
import threading


def serve(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(256 * 1024):
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)


def accept_forever(server: socket.socket) -> None:
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def main() -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    print(server.getsockname()[1], flush=True)
    threading.Thread(target=accept_forever, args=(server,), daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()

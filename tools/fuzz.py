"""Fuzz a real kernel with generated msgpack-rpc traffic; report what went wrong.

    python tools/fuzz.py [--cases 1000000] [--seed N] [--kernels 1] [--json]

Starts a farm (``kernelfarm serve``, loopback, a temporary data dir), then drives it with
generated cases over several connections, pipelined in batches:

- structured: well-formed requests ``[0, msgid, method, params]`` for every method of the
  contract (and unknown ones), with parameters of any type, count, size and depth;
- malformed: decodable messages that are not msgpack-rpc (wrong shapes, kinds, msgids);
- raw: random bytes, and valid requests with bytes flipped, cut or spliced.

Structured cases go on connections that must never be dropped, and every request must be
answered.  Malformed and raw cases go on their own connections, which the kernel may close
(that is the contract: a stream it cannot decode is closed, and so is one with too many
malformed messages); after each, a ``kernel.ping`` on a fresh connection must be answered.

Reported: crashes (a kernel process that changed pid), restarts (the supervisor's count),
dropped connections (a structured connection closed, or a request left unanswered), the
kernels' peak RSS, and the failures the farm logged at ERROR (bugs inside handlers).
Exit status 0 only with no crash, no restart and no drop.
"""

from __future__ import annotations

import argparse
import json
import random
import select
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import msgpack
import psutil

from kernelfarm.auth.tokens import admin_token_of
from kernelfarm.supervisor import launch

pack: Callable[[Any], bytes] = msgpack.packb

METHODS = [
    "kernel.ping", "kernel.stats",
    "fs.mkdir", "fs.rmdir", "fs.listdir", "fs.stat", "fs.write_file", "fs.create",
    "fs.read_file",
    "fs.pread", "fs.pwrite", "fs.truncate", "fs.unlink", "fs.rename", "fs.fsync",
    "fs.symlink", "fs.readlink", "fs.chmod", "fs.utime", "fs.statfs",
    "net.socket", "net.connect", "net.bind", "net.listen", "net.accept", "net.send",
    "net.recv", "net.sendto", "net.recvfrom", "net.shutdown", "net.close", "net.keep",
    "net.stats", "net.list",
]
VOLUMES = ["fz0", "fz1", "fz2"]
NAMESPACES = ["ns0", "ns1", "ns2"]
CONFIG = """\
[fs]
max_file_bytes = 4194304
[net]
default_timeout = 0.02
max_timeout = 0.05
"""
"""Waits are cut short (a fuzzed recv must not hold a request for 30 s) and files small."""

BATCH = 200
STRUCTURED_CONNECTIONS = 4
REPLY_DEADLINE_S = 60.0


class Generator:
    """Random cases from one seed: the same seed gives the same run."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    # -- values ---------------------------------------------------------------------------

    def value(self, depth: int = 0) -> Any:
        r = self.rng.random()
        if depth > 3 or r < 0.55:
            return self.scalar()
        if r < 0.75:
            return [self.value(depth + 1) for _ in range(self.rng.randrange(4))]
        if r < 0.85:
            return {self.scalar(): self.value(depth + 1) for _ in range(self.rng.randrange(3))}
        return self.nested()

    def scalar(self) -> Any:
        rng = self.rng
        kind = rng.randrange(12)
        if kind == 0:
            return None
        if kind == 1:
            return rng.random() < 0.5
        if kind == 2:
            return rng.choice([0, 1, -1, 2**31, 2**32, 2**63 - 1, -2**63, 2**64 - 1,
                               rng.randrange(-1000, 1 << 20)])
        if kind == 3:
            return rng.choice([0.0, -0.0, 1.5, float("nan"), float("inf"), float("-inf"),
                               rng.uniform(-1e9, 1e9)])
        if kind in (4, 5, 6):
            return self.path()
        if kind == 7:
            return rng.choice(NAMESPACES + ["", "tcp", "udp", "127.0.0.1", "::1", "x" * 300])
        if kind == 8:
            return self.text()
        if kind == 9:
            return rng.randbytes(rng.choice([0, 1, 7, 100, 4096, rng.randrange(70000)]))
        if kind == 10:
            return rng.choice(["tcp", "udp", "127.0.0.1", "0.0.0.0", "::1", "localhost"])
        return rng.randrange(0, 70000)  # ports, sizes, offsets

    def text(self) -> str:
        rng = self.rng
        alphabet = "ab/.\x00\n é中\U0001f600\\" + "%"
        size = rng.choice([0, 1, 5, 50, 300, 5000, rng.randrange(200_000)])
        return "".join(rng.choice(alphabet) for _ in range(min(size, 2000))) * \
            max(1, size // 2000)

    def path(self) -> str:
        rng = self.rng
        parts = [rng.choice(VOLUMES + ["", ".", "..", "x" * 300, "a\x00b"])]
        for _ in range(rng.randrange(4)):
            parts.append(rng.choice(["a", "b", "c", "", ".", "..", "long" * 80]))
        path = "/" + "/".join(parts)
        return path if rng.random() < 0.9 else path.lstrip("/")

    def nested(self) -> Any:
        depth = self.rng.choice([10, 100, 500, 900, 1000])
        obj: Any = None
        for _ in range(depth):
            obj = [obj]
        return obj

    # -- cases ----------------------------------------------------------------------------

    def request(self, msgid: int) -> bytes:
        """A well-formed request: any method, any parameters."""
        rng = self.rng
        method = rng.choice(METHODS) if rng.random() < 0.95 else self.text()[:50]
        count = rng.choice([0, 1, 2, 3, 4, 5, 6]) if rng.random() < 0.3 else \
            self.usual_count(method)
        params = [self.param(method, i) for i in range(count)]
        try:
            return pack([0, msgid, method, params])
        except (ValueError, OverflowError, TypeError):  # nesting past msgpack's limit
            return pack([0, msgid, method, []])

    @staticmethod
    def usual_count(method: str) -> int:
        return {"fs.pread": 3, "fs.pwrite": 3, "fs.rename": 2, "fs.write_file": 2,
                "fs.create": 3,
                "fs.truncate": 2, "fs.symlink": 2, "fs.chmod": 2, "fs.utime": 2,
                "net.socket": 2, "net.connect": 4, "net.bind": 4, "net.listen": 3,
                "net.accept": 3, "net.send": 3, "net.recv": 4, "net.sendto": 5,
                "net.recvfrom": 4, "net.shutdown": 3, "net.close": 2, "net.keep": 2,
                "net.stats": 1, "net.list": 1}.get(method, 0 if method.startswith("kernel")
                                                    else 1)

    def param(self, method: str, index: int) -> Any:
        rng = self.rng
        if rng.random() < 0.6:
            if index == 0 and method.startswith("fs."):
                return self.path()
            if index == 0 and method.startswith("net."):
                return rng.choice(NAMESPACES)
            if index == 1 and method.startswith("net.") and method != "net.socket":
                return rng.randrange(1, 5)  # sids are random: this is mostly EBADF
        return self.value()

    def malformed(self) -> bytes:
        rng = self.rng
        choice = rng.randrange(6)
        if choice == 0:
            obj: Any = self.value()
        elif choice == 1:
            obj = [rng.choice([0, 1, 2, 3, -1, "0", None]), self.value(), self.value(),
                   self.value()]
        elif choice == 2:
            obj = [0, self.value(), rng.choice(METHODS), self.value()]
        elif choice == 3:
            obj = [1, rng.randrange(100), None, self.value()]  # a response, to a server
        elif choice == 4:
            obj = [0, rng.randrange(100), rng.choice(METHODS)]
        else:
            obj = [2, self.value(), self.value()]
        try:
            return pack(obj)
        except (ValueError, OverflowError, TypeError):
            return b"\xc0"

    def raw(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.4:
            return rng.randbytes(rng.choice([1, 2, 10, 100, 1000, 65536]))
        data = bytearray(self.request(rng.randrange(1 << 32)))
        for _ in range(rng.randrange(1, 6)):
            how = rng.randrange(3)
            if how == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif how == 1 and data:
                del data[rng.randrange(len(data)):]
            else:
                data[rng.randrange(len(data) + 1):0] = rng.randbytes(rng.randrange(1, 9))
        return bytes(data)


class Connection:
    """A plain socket with a msgpack unpacker: the fuzzer must not trust any client code.
    With ``token`` set (the farm's admin token) it says ``auth.hello`` first, so the
    fuzz reaches every method, as a tenant gone bad would."""

    token: str | None = None

    def __init__(self, addr: tuple[str, int]) -> None:
        self.sock = socket.create_connection(addr, timeout=30)
        self.unpacker = msgpack.Unpacker(raw=False, max_buffer_size=256 * 1024 * 1024,
                                         strict_map_key=False)
        if self.token is not None:
            self.send(msgpack.packb([0, 0, "auth.hello", [self.token]]))
            if not self.replies({0}, time.monotonic() + 30):
                raise ConnectionError("no answer to auth.hello")

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def replies(self, want: set[int], deadline: float) -> bool:
        """Read until every msgid in ``want`` is answered; False on EOF or deadline."""
        while want:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            readable, _, _ = select.select([self.sock], [], [], remaining)
            if not readable:
                continue
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return False
            if not data:
                return False
            self.unpacker.feed(data)
            for message in self.unpacker:
                if type(message) is list and len(message) == 4 and message[0] == 1:
                    want.discard(message[1])
        return True

    def drain_to_eof(self, timeout: float = 10.0) -> None:
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(1 << 20):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


class Farm:
    def __init__(self, kernels: int, workdir: Path) -> None:
        config = workdir / "fuzz.toml"
        config.write_text(CONFIG)
        self.log_path = workdir / "farm.log"
        self.proc = launch.spawn(["--kernels", str(kernels), "--data-dir",
                                  str(workdir / "data"), "--config", str(config)],
                                 log_path=self.log_path)
        ready = launch.wait_ready(self.proc, self.log_path, 60.0)
        Connection.token = admin_token_of(workdir / "data")
        self.control = (ready["control"][0], ready["control"][1])
        self.pids = {k["id"]: k["pid"] for k in ready["kernels"]}

    def call(self, method: str) -> Any:
        conn = Connection(self.control)
        try:
            conn.send(msgpack.packb([0, 1, method, []]))
            while True:
                data = conn.sock.recv(1 << 20)
                if not data:
                    raise ConnectionError("the supervisor closed the control connection")
                conn.unpacker.feed(data)
                for message in conn.unpacker:
                    if message[1] == 1:
                        return message[3]
        finally:
            conn.close()

    def kernels(self) -> list[dict[str, Any]]:
        kernels: list[dict[str, Any]] = self.call("cluster.map")["kernels"]
        return kernels

    def restarts(self) -> int:
        return sum(int(k.get("restarts", 0)) for k in self.call("cluster.status")["kernels"])

    def stop(self) -> None:
        launch.stop(self.proc)


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total = max(total, psutil.Process(pid).memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return total


def run(cases: int, seed: int, kernels: int, progress: bool) -> dict[str, Any]:
    gen = Generator(seed)
    with tempfile.TemporaryDirectory(prefix="kernelfarm-fuzz-") as tmp:
        farm = Farm(kernels, Path(tmp))
        try:
            summary = drive(farm, gen, cases, progress)
        finally:
            farm.stop()
        log = farm.log_path.read_text(errors="replace")
        failures = [line for line in log.splitlines()
                    if " ERROR " in line or " CRITICAL " in line]
        summary["logged_failures"] = len(failures)
        summary["first_failures"] = failures[:5]
        return summary


def drive(farm: Farm, gen: Generator, cases: int, progress: bool) -> dict[str, Any]:
    kernels = farm.kernels()
    addrs = [(k["addr"][0], k["addr"][1]) for k in kernels]
    pids = [k["pid"] for k in kernels]
    structured = [Connection(addrs[i % len(addrs)]) for i in range(STRUCTURED_CONNECTIONS)]
    counts = {"structured": 0, "malformed": 0, "raw": 0}
    dropped = 0
    closed_by_kernel = 0
    peak = rss(pids)
    started = last_report = time.monotonic()
    done = 0
    msgid = 0
    turn = 0
    while done < cases:
        turn += 1
        size = min(BATCH, cases - done)
        if turn % 10:  # nine batches in ten: structured, on the long-lived connections
            index = turn % len(structured)
            conn = structured[index]
            want = set()
            data = []
            for _ in range(size):
                msgid = (msgid + 1) & 0xFFFFFFFF
                want.add(msgid)
                data.append(gen.request(msgid))
            counts["structured"] += size
            if not (conn.send(b"".join(data))
                    and conn.replies(want, time.monotonic() + REPLY_DEADLINE_S)):
                dropped += 1
                conn.close()
                structured[index] = Connection(addrs[index % len(addrs)])
        else:  # hostile batches: malformed then raw, each on its own connection
            for kind in ("malformed", "raw"):
                half = max(1, size // 2)
                addr = gen.rng.choice(addrs)
                conn = Connection(addr)
                make = gen.malformed if kind == "malformed" else gen.raw
                conn.send(b"".join(make() for _ in range(half)))
                counts[kind] += half
                try:
                    conn.sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass  # the kernel closed it already
                conn.drain_to_eof()
                conn.close()
                closed_by_kernel += 1
                probe = Connection(addr)  # the kernel must still answer at once
                probe.send(msgpack.packb([0, 7, "kernel.ping", []]))
                if not probe.replies({7}, time.monotonic() + REPLY_DEADLINE_S):
                    dropped += 1
                probe.close()
        done = sum(counts.values())
        peak = max(peak, rss(pids))
        now = time.monotonic()
        if progress and (now - last_report >= 5.0 or done >= cases):
            last_report = now
            print(f"fuzz: {done}/{cases} cases ({100 * done // cases}%), "
                  f"{done / (now - started):.0f}/s, dropped {dropped}, "
                  f"peak RSS {peak / 2**20:.0f} MiB", file=sys.stderr, flush=True)
    for conn in structured:
        conn.close()
    after = farm.kernels()
    crashes = sum(1 for k in after if k["pid"] not in pids) + \
        sum(1 for k in after if k["state"] != "running")
    return {"cases": done, **counts, "seconds": round(time.monotonic() - started, 1),
            "crashes": crashes, "restarts": farm.restarts(), "dropped": dropped,
            "hostile_connections": closed_by_kernel, "peak_rss_bytes": peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--kernels", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    summary = run(args.cases, args.seed, args.kernels, progress=not args.quiet)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{summary['cases']} cases ({summary['structured']} structured, "
              f"{summary['malformed']} malformed, {summary['raw']} raw) in "
              f"{summary['seconds']} s: {summary['crashes']} crashes, "
              f"{summary['restarts']} restarts, {summary['dropped']} dropped connections, "
              f"peak kernel RSS {summary['peak_rss_bytes'] / 2**20:.0f} MiB, "
              f"{summary['logged_failures']} failures logged")
        for line in summary["first_failures"]:
            print(f"  {line}")
    bad = summary["crashes"] or summary["restarts"] or summary["dropped"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

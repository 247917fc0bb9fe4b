"""The benchmark workloads: what each in-flight request slot sends, and the state it needs.

A workload is set up once through an ordinary blocking ``call(method, *params)`` routed
to the owning kernel (volumes made, files written, sockets connected), then turned into
request chains that the load generator replays without the client library: a chain is
the requests one in-flight slot sends in turn, forever.  Chains are per *stream* — a
(tenant, index) pair that no other slot shares — so a workload that changes state
(create then unlink, send then recv on a socket) never has two slots racing on the same
file or socket, and state stays bounded however long the run.

Paths are ``/<tenant>/...`` (the volume is the tenant) and the net namespace is the
tenant, so a tenant's fs and net requests go to one kernel.  Each request carries the
result it must get where that is known (the 4 KiB read back, the bytes written or sent,
the echo received), so a server answering wrongly shows as ``EBADRESULT`` errors; a stat's
result (inode, times) is only required to come without an error.

    fs-stat      fs.stat of an existing file
    fs-create    fs.write_file of an empty new file, then fs.unlink of it
    fs-write-4k  fs.pwrite of 4 KiB at offset 0
    fs-read-4k   fs.pread of 4 KiB at offset 0
    net-echo     net.send of 64 bytes to a host echo server, then net.recv of the echo
    mixed        per stream: 4 stat, 1 read-4k, 1 write-4k, 1 create, 1 unlink, 1 send,
                 1 recv (10 requests: mostly metadata reads, as real file traffic is)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kernelfarm.bench.loadgen import Address, Chain, Request

Call = Callable[..., Any]
"""A blocking ``call(method, *params)`` that reaches the kernel owning the params' key."""

WORKLOADS = ("fs-stat", "fs-create", "fs-write-4k", "fs-read-4k", "net-echo", "mixed")
NEEDS_ECHO = frozenset({"net-echo", "mixed"})
"""Workloads whose sockets connect to a host echo server (the caller starts one)."""

BLOCK = bytes(range(256)) * 16
"""4 KiB of data that is not all zeros (a hole-aware store cannot shortcut it)."""
ECHO_PAYLOAD = b"kernelfarm-bench" * 4
"""64 bytes per net-echo round trip: small enough to be one segment each way."""
RECV_TIMEOUT_S = 5.0
STAT_FILE = "stat.dat"
DATA_FILE = "data.4k"


@dataclass
class PreparedWorkload:
    """The chains of every stream, and what must be undone after the run."""

    name: str
    chains: dict[str, list[Chain]]
    sockets: list[tuple[str, Any]] = field(default_factory=list)

    def chain(self, tenant: str, stream: int) -> Chain:
        return self.chains[tenant][stream]

    def cleanup(self, call: Call) -> None:
        """Close the sockets set-up opened (files stay: the farm's data dir is scratch)."""
        sockets, self.sockets = self.sockets, []
        for namespace, sid in sockets:
            call("net.close", namespace, sid)


def prepare(name: str, call: Call, streams: Mapping[str, int], *,
            echo_address: Address | None = None) -> PreparedWorkload:
    """Set up ``streams[tenant]`` streams per tenant for workload ``name``.

    Net sockets belong to the connection that opened them and close with it, so the
    client behind ``call`` must stay connected until :meth:`PreparedWorkload.cleanup`.
    """
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if name in NEEDS_ECHO:
        if echo_address is None:
            raise ValueError(f"workload {name!r} needs an echo server address")
        if echo_address[0] not in ("127.0.0.1", "::1"):
            raise ValueError(f"echo server must be on loopback, not {echo_address[0]!r}")
    prepared = PreparedWorkload(name, {})
    try:
        for tenant, count in streams.items():
            _make_volume(call, tenant)
            prepared.chains[tenant] = [
                _stream_chain(name, call, tenant, index, echo_address, prepared)
                for index in range(count)]
    except BaseException:
        prepared.cleanup(call)
        raise
    return prepared


def _make_volume(call: Call, tenant: str) -> None:
    try:
        call("fs.mkdir", f"/{tenant}")
    except FileExistsError:
        pass  # a tenant left by an earlier run is as good as a new one
    call("fs.write_file", f"/{tenant}/{STAT_FILE}", b"kernelfarm")
    call("fs.write_file", f"/{tenant}/{DATA_FILE}", BLOCK)


def _stream_chain(name: str, call: Call, tenant: str, index: int,
                  echo_address: Address | None, prepared: PreparedWorkload) -> Chain:
    stat: Request = ("fs.stat", [f"/{tenant}/{STAT_FILE}"])
    read: Request = ("fs.pread", [f"/{tenant}/{DATA_FILE}", 0, len(BLOCK)], BLOCK)
    write: Request = ("fs.pwrite", [f"/{tenant}/{DATA_FILE}", 0, BLOCK], len(BLOCK))
    if name == "fs-stat":
        return [stat]
    if name == "fs-read-4k":
        return [read]
    if name == "fs-write-4k":
        return [write]
    create, unlink = _create_pair(call, tenant, index)
    if name == "fs-create":
        return [create, unlink]
    assert echo_address is not None
    send, recv = _echo_pair(call, tenant, echo_address, prepared)
    if name == "net-echo":
        return [send, recv]
    return [stat, read, stat, write, stat, create, stat, unlink, send, recv]


def _create_pair(call: Call, tenant: str, index: int) -> tuple[Request, Request]:
    path = f"/{tenant}/create-{index}"
    try:
        call("fs.unlink", path)  # left by an interrupted run: the chain starts by creating
    except FileNotFoundError:
        pass
    return ("fs.write_file", [path, b""], None), ("fs.unlink", [path], None)


def _echo_pair(call: Call, tenant: str, echo_address: Address,
               prepared: PreparedWorkload) -> tuple[Request, Request]:
    sid = call("net.socket", tenant, "tcp")
    prepared.sockets.append((tenant, sid))
    call("net.connect", tenant, sid, echo_address[0], echo_address[1])
    # Reading up to twice the payload drains any backlog a short read left behind.
    return (("net.send", [tenant, sid, ECHO_PAYLOAD], len(ECHO_PAYLOAD)),
            ("net.recv", [tenant, sid, 2 * len(ECHO_PAYLOAD), RECV_TIMEOUT_S], ECHO_PAYLOAD))

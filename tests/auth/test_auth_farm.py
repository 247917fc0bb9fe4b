"""Tenants through real farms, in both modes: what a connection may do before and after
``auth.hello``, and what one tenant can never reach of another's.

Each mode's farm serves the whole module; every test adds tenants of its own (fresh
names), so tests never see each other's grants.  The farms allow every destination in
``net.allow`` so that only the farm's own-port guard stands between a namespace and the
farm's ports.
"""

from __future__ import annotations

import errno
import itertools
import socket
import time
from typing import Any, Callable, Iterator

import pytest
from farmctl import ADMIN_TOKEN, Farm, start_farm
from raw_rpc import RawConnection

import kernelfarm

MODES = {"partitioned": ("--mode", "partitioned"),
         "locked": ("--mode", "locked", "--threads", "2")}
WIDE_OPEN = '[net]\nallow = ["0.0.0.0/0", "::/0"]\n'

_fresh = itertools.count()


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_fresh)}"


@pytest.fixture(scope="module")
def partitioned_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with start_farm(tmp_path_factory.mktemp("authfarm"), 2, *MODES["partitioned"],
                    config_text=WIDE_OPEN) as farm:
        yield farm


@pytest.fixture(scope="module")
def locked_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    with start_farm(tmp_path_factory.mktemp("authlocked"), 1, *MODES["locked"],
                    config_text=WIDE_OPEN) as farm:
        yield farm


@pytest.fixture(scope="module", params=list(MODES))
def farm(request: pytest.FixtureRequest) -> Farm:
    return request.getfixturevalue(f"{request.param}_farm")  # type: ignore[no-any-return]


@pytest.fixture
def admin(farm: Farm) -> Iterator[kernelfarm.Client]:
    with kernelfarm.Client(farm.control, token=ADMIN_TOKEN) as client:
        yield client


def add_tenant(admin: kernelfarm.Client, name: str, volumes: list[str],
               namespaces: list[str]) -> str:
    result = admin.control_call("tenant.add", name, volumes, namespaces)
    assert result["tenant"] == name
    return str(result["token"])


def kernel_addrs(farm: Farm) -> list[tuple[str, int]]:
    return [(k["addr"][0], k["addr"][1]) for k in farm.cluster_map()["kernels"]]


def denied(exc: pytest.ExceptionInfo[OSError]) -> bool:
    return exc.value.errno == errno.EACCES


# -- before auth.hello ------------------------------------------------------------------


def test_only_public_methods_answer_before_hello(farm: Farm) -> None:
    with RawConnection(farm.control) as control:
        assert control.code("cluster.map") is None
        calls: list[tuple[str, list[Any]]] = [
            ("cluster.status", []), ("cluster.scale", [1]), ("tenant.list", []),
            ("tenant.add", ["x", ["*"], []])]
        for method, params in calls:
            assert control.code(method, *params) == "NOAUTH", method
        assert control.code("cluster.nothing") == "ENOSYS"
    for addr in kernel_addrs(farm):
        with RawConnection(addr) as kernel:
            assert kernel.code("kernel.ping") is None
            for method, params in [("fs.stat", ["/x"]), ("fs.listdir", ["/"]),
                                   ("fs.mkdir", ["/x"]), ("net.socket", ["x", "tcp"]),
                                   ("net.list", ["x"]), ("kernel.stats", [])]:
                assert kernel.code(method, *params) == "NOAUTH", method
            assert kernel.code("kernel.set_table", 1, [], []) == "ENOSYS"
            error, result = kernel.call("auth.hello", ADMIN_TOKEN)
            assert error is None and result == {"tenant": "admin", "admin": True}
            assert kernel.code("fs.stat", "/") is None


def test_a_wrong_token_is_eacces_slowed_down_and_never_echoed(farm: Farm) -> None:
    guess = "x" * 43
    addr = kernel_addrs(farm)[0]
    with RawConnection(addr) as kernel:
        started = time.monotonic()
        for _ in range(4):
            error, _ = kernel.call("auth.hello", guess)
            assert error["code"] == "EACCES"
            assert guess not in str(error)
        # 0.05 + 0.1 + 0.2 + 0.4 s: each failure on a connection costs twice the last.
        assert time.monotonic() - started >= 0.75
        for bad in [None, 42, "", "y" * 5000, ["list"]]:
            assert kernel.code("auth.hello", bad) == "EACCES"
        assert kernel.code("fs.stat", "/") == "NOAUTH"
        assert kernel.call("auth.hello", ADMIN_TOKEN)[1]["admin"] is True
    with RawConnection(farm.control) as control:
        error, _ = control.call("auth.hello", guess)
        assert error["code"] == "EACCES" and guess not in str(error)


def test_calls_pipelined_behind_hello_run_as_the_tenant(farm: Farm) -> None:
    import msgpack

    addr = kernel_addrs(farm)[0]
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(msgpack.packb([0, 1, "auth.hello", [ADMIN_TOKEN]])
                     + msgpack.packb([0, 2, "fs.stat", ["/"]]))
        unpacker = msgpack.Unpacker(raw=False)
        replies: dict[int, Any] = {}
        while len(replies) < 2:
            unpacker.feed(sock.recv(65536))
            replies.update({m[1]: m for m in unpacker})
    assert replies[1][2] is None and replies[2][2] is None


# -- grants -----------------------------------------------------------------------------


def test_a_tenant_uses_its_volumes_and_namespaces_only(farm: Farm,
                                                       admin: kernelfarm.Client) -> None:
    alice = fresh("alice")
    other = fresh("other")
    token = add_tenant(admin, alice, [alice, f"{alice}-*"], [alice])
    admin.fs.mkdir(f"/{other}")
    admin.fs.write_file(f"/{other}/secret", b"not alice's")
    with kernelfarm.Client(farm.control, token=token) as client:
        client.fs.mkdir(f"/{alice}")
        client.fs.mkdir(f"/{alice}-src")
        client.fs.write_file(f"/{alice}-src/a.c", b"int main;")
        assert client.fs.read_file(f"/{alice}-src/a.c") == b"int main;"
        attempts: list[Callable[[], object]] = [
            lambda: client.fs.read_file(f"/{other}/secret"),
            lambda: client.fs.stat(f"/{other}"),
            lambda: client.fs.listdir(f"/{other}"),
            lambda: client.fs.mkdir(f"/{fresh('other')}"),
            lambda: client.fs.rename(f"/{other}/secret", f"/{alice}/mine"),
            lambda: client.net.socket(other, "tcp"),
            lambda: client.net.list(other)]
        for attempt in attempts:
            with pytest.raises(PermissionError) as exc:
                attempt()
            assert denied(exc)
        volumes = client.fs.listdir("/")
        assert f"/{other}" not in volumes and other not in volumes
        assert set(volumes) >= {alice, f"{alice}-src"}
        assert all(v == alice or v.startswith(f"{alice}-") for v in volumes)
        with client.net.socket(alice, "tcp") as sock:
            assert [s["sid"] for s in client.net.list(alice)] == [sock.sid]
        assert client.status()["kernels"]
        calls: list[tuple[str, list[Any]]] = [("cluster.scale", [1]), ("tenant.list", []),
                 ("tenant.add", [fresh("eve"), ["*"], ["*"]]), ("tenant.remove", [alice])]
        for method, params in calls:
            with pytest.raises(PermissionError):
                client.control_call(method, *params)
    assert other in admin.fs.listdir("/") and alice in admin.fs.listdir("/")


def test_sockets_belong_to_their_tenant(farm: Farm, admin: kernelfarm.Client) -> None:
    shared = fresh("shared")
    alice = add_tenant(admin, fresh("alice"), [], [shared])
    bob = add_tenant(admin, fresh("bob"), [], [shared])
    with kernelfarm.Client(farm.control, token=alice) as a, \
            kernelfarm.Client(farm.control, token=bob) as b:
        socks = [a.call("net.socket", shared, "udp") for _ in range(3)]
        sid = socks[0]
        assert all(0 < s < 2**51 for s in socks)
        assert sorted(abs(x - y) for x, y in itertools.combinations(socks, 2))[0] > 1
        assert b.net.list(shared) == []
        calls: list[tuple[str, list[Any]]] = [("net.close", []), ("net.bind", ["127.0.0.1", 0]),
                               ("net.sendto", [b"x", "127.0.0.1", 9]),
                               ("net.recvfrom", [10, 0]), ("net.keep", []),
                               ("net.shutdown", [2]), ("net.send", [b"x"]),
                               ("net.recv", [10, 0.0])]
        for method, params in calls:
            with pytest.raises(OSError) as exc:
                b.call(method, shared, sid, *params)
            assert exc.value.errno == errno.EBADF, method
        mine = b.call("net.socket", shared, "udp")
        assert [s["sid"] for s in b.net.list(shared)] == [mine]
        assert sorted(s["sid"] for s in a.net.list(shared)) == sorted(socks)
        assert {s["sid"] for s in admin.net.list(shared)} >= {*socks, mine}
        a.call("net.close", shared, sid)


# -- live changes -----------------------------------------------------------------------


def test_removing_or_rotating_a_tenant_cuts_its_open_connections(
        farm: Farm, admin: kernelfarm.Client) -> None:
    names = {key: fresh(key) for key in ("carol", "dave")}
    carol = add_tenant(admin, names["carol"], [names["carol"]], [names["carol"]])
    dave = add_tenant(admin, names["dave"], [names["dave"]], [])
    with kernelfarm.Client(farm.control, token=carol) as c, \
            kernelfarm.Client(farm.control, token=dave) as d:
        c.fs.mkdir(f"/{names['carol']}")
        d.fs.mkdir(f"/{names['dave']}")
        assert c.status() and d.status()
        admin.control_call("tenant.remove", names["carol"])
        with pytest.raises(PermissionError):
            c.fs.stat(f"/{names['carol']}")  # the same kernel connection as before
        with pytest.raises(PermissionError):
            c.status()  # the same control connection
        with pytest.raises(PermissionError):
            kernelfarm.Client(farm.control, token=carol)
        rotated = admin.control_call("tenant.rotate", names["dave"])["token"]
        assert rotated != dave
        with pytest.raises(PermissionError):
            d.fs.stat(f"/{names['dave']}")
        with pytest.raises(PermissionError):
            kernelfarm.Client(farm.control, token=dave)
        with kernelfarm.Client(farm.control, token=rotated) as again:
            assert again.fs.stat(f"/{names['dave']}")["type"] == "dir"
    listed = {t["name"]: t for t in admin.control_call("tenant.list")}
    assert names["carol"] not in listed and listed[names["dave"]]["volumes"] == [names["dave"]]
    assert listed["admin"]["admin"] is True
    assert all("token" not in str(t) for t in listed.values())


def test_tenant_names_and_patterns_are_checked(admin: kernelfarm.Client) -> None:
    for name, volumes in [("", []), ("../x", []), ("a" * 65, []), ("ok", ["a/b"]),
                          ("ok", [""]), ("ok", "notalist")]:
        with pytest.raises(OSError) as exc:
            admin.control_call("tenant.add", name, volumes, [])
        assert exc.value.errno == errno.EINVAL
    with pytest.raises(FileExistsError):
        admin.control_call("tenant.add", "admin", [], [])
    with pytest.raises(PermissionError):
        admin.control_call("tenant.remove", "admin")
    with pytest.raises(FileNotFoundError):
        admin.control_call("tenant.remove", fresh("nobody"))


# -- the farm's own ports ---------------------------------------------------------------


def test_no_namespace_reaches_the_control_port_or_a_kernel_port(
        farm: Farm, admin: kernelfarm.Client) -> None:
    ns = fresh("ssrf")
    targets = [farm.control, *kernel_addrs(farm)]
    with socket.socket() as outside:
        outside.bind(("127.0.0.1", 0))
        outside.listen()
        allowed_port = outside.getsockname()[1]
        for host, port in targets:
            for spelling in [host, f"::ffff:{host}", "0.0.0.0"]:
                with admin.net.socket(ns, "tcp") as sock:
                    with pytest.raises(PermissionError):
                        sock.connect(spelling, port)
            with admin.net.socket(ns, "udp") as sock:
                with pytest.raises(PermissionError):
                    admin.call("net.sendto", ns, sock.sid, b"[0,1]", host, port)
        with admin.net.socket(ns, "tcp") as sock:
            sock.connect("127.0.0.1", allowed_port)  # the guard is not a blanket refusal
    assert admin.net.stats(ns)["denied"] >= 3 * len(targets)

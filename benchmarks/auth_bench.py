"""What authentication costs on the fast path: fs.stat ops/s with ``[auth] required`` on and
off, side by side in one run.

Two one-kernel farms, one with auth on (the load runs as a tenant whose grants are glob
patterns, so every call goes through the grant check and its cache) and one with auth off.
The same pipelined load runs against each in turn, alternating ``rounds`` times so drift of
this shared machine hits both alike.  Each connection says ``auth.hello`` once when auth is
on; the claim is that this is all it costs, so the ratio should be within noise of 1.

    python benchmarks/auth_bench.py [--rounds 3] [--duration 3] [--connections 4] [--depth 32]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import uvloop

from kernelfarm.auth.tokens import admin_token_of
from kernelfarm.bench.runner import machine, write_raw
from kernelfarm.bench.systems import served_farm
from kernelfarm.client import Client

RESULTS_DIR = Path(__file__).resolve().parent / "results"
VOLUMES = [f"bench{i}" for i in range(8)]


@contextlib.contextmanager
def farm(scratch: Path, required: bool) -> Iterator[tuple[tuple[str, int], str | None]]:
    """A one-kernel farm; yields its kernel address and the token the load sends."""
    config = (f"[auth]\nrequired = {'true' if required else 'false'}\n"
              '[fs]\nfsync = "never"\n')
    with served_farm(scratch, config, ["--kernels", "1"]) as served, \
            Client(served.control, token=admin_token_of(served.data_dir)) as admin:
        for volume in VOLUMES:
            admin.fs.mkdir(f"/{volume}")
        token = None
        if required:
            token = admin.control_call("tenant.add", "loader", ["bench*", "other-*"],
                                       ["bench*"])["token"]
        kernel = admin.cluster_map()["kernels"][0]["addr"]
        yield (kernel[0], kernel[1]), token


async def load(addr: tuple[str, int], token: str | None, connections: int, depth: int,
               duration: float) -> float:
    """fs.stat ops/s over ``duration`` s: ``depth`` requests in flight per connection."""
    requests = [msgpack.packb([0, i, "fs.stat", [f"/{VOLUMES[i % len(VOLUMES)]}"]])
                for i in range(depth)]
    batch = b"".join(requests)
    done = 0
    stop = False

    async def one() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(*addr)
        unpacker = msgpack.Unpacker(raw=False)
        if token is not None:  # once per connection
            writer.write(msgpack.packb([0, 0, "auth.hello", [token]]))
            unpacker.feed(await reader.read(65536))
            reply = next(unpacker)
            assert reply[2] is None, reply
        while not stop:
            writer.write(batch)
            got = 0
            while got < depth:
                unpacker.feed(await reader.read(1 << 20))
                for reply in unpacker:
                    assert reply[2] is None, reply
                    got += 1
            done += depth
        writer.close()

    tasks = [asyncio.ensure_future(one()) for _ in range(connections)]
    await asyncio.sleep(0.5)  # warm-up
    before, started = done, time.perf_counter()
    await asyncio.sleep(duration)
    ops = (done - before) / (time.perf_counter() - started)
    stop = True
    await asyncio.gather(*tasks)
    return ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    host = machine()
    results: dict[str, list[float]] = {"required": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="kf-auth-") as scratch, \
            farm(Path(scratch) / "on", True) as on, farm(Path(scratch) / "off", False) as off:
        for _ in range(args.rounds):
            for name, (addr, token) in (("required", on), ("off", off)):
                results[name].append(uvloop.run(load(addr, token, args.connections,
                                                     args.depth, args.duration)))
    best = {name: max(values) for name, values in results.items()}
    summary: dict[str, Any] = {
        "workload": "fs.stat", "connections": args.connections, "depth": args.depth,
        "duration_s": args.duration, "rounds": results, "best": best,
        "ratio_required_to_off": best["required"] / best["off"]}
    write_raw(args.out, "auth_bench", summary, host=host)
    for name, values in results.items():
        print(f"auth {name:<8} fs.stat ops/s: " + ", ".join(f"{v:,.0f}" for v in values)
              + f"  (best {best[name]:,.0f})")
    print(f"required / off = {summary['ratio_required_to_off']:.3f}")


if __name__ == "__main__":
    main()

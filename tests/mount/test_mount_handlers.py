"""The mount's FUSE handlers called directly against a real farm, as the kernel calls them,
for what a program cannot time on purpose: a name another client makes between the
kernel's lookup and its create, a pending write answered after a ``utime`` sent behind
it, and which ``getattr`` needs the farm at all (the calls are counted)."""

from __future__ import annotations

import asyncio
import errno
import os
import stat as statmod
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any, AsyncIterator, Awaitable, Callable

import pyfuse3
import pytest
import pytest_asyncio

from farmctl import Farm
from kernelfarm import aio
from kernelfarm.mount.attrcache import AttrCache
from kernelfarm.mount.attrs import Caching
from kernelfarm.mount.inodes import ROOT_INO
from kernelfarm.mount.listings import Listings
from kernelfarm.mount.operations import FarmOperations

CREATE = os.O_CREAT | os.O_WRONLY


class CountingFs:
    """The client's fs methods, counted; ``hold`` makes one method wait for an event."""

    def __init__(self, fs: Any) -> None:
        self._fs = fs
        self.calls: Counter[str] = Counter()
        self.held: dict[str, asyncio.Event] = {}

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._fs, name)

        async def call(*args: Any) -> Any:
            self.calls[name] += 1
            if name in self.held:
                await self.held[name].wait()
            return await method(*args)

        return call


@pytest_asyncio.fixture
async def client(farm: Farm) -> AsyncIterator[aio.Client]:
    async with aio.Client(farm.control) as client:
        yield client


class Clock:
    """The caches' clock, moved by the test: what is fresh does not hang on its speed."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def with_clock(ops: FarmOperations, timeout: float) -> Clock:
    """``ops`` keeping attributes and names for ``timeout`` seconds of a test clock."""
    clock = Clock()
    ops.cache = AttrCache(timeout, clock)
    ops.names = Listings(timeout, clock)
    return clock


async def volume(client: aio.Client, ops: FarmOperations, name: str) -> int:
    """A fresh volume, looked up as the kernel would: its inode number."""
    await client.fs.mkdir(f"/{name}")
    return ops.inodes.lookup(ROOT_INO, name)


async def errno_of(call: Awaitable[Any]) -> int:
    with pytest.raises(pyfuse3.FUSEError) as failure:
        await call
    return failure.value.errno


@pytest.mark.asyncio
async def test_exclusive_create_loses_to_another_clients_create(client: aio.Client) -> None:
    ops = FarmOperations(client.fs)
    parent = await volume(client, ops, "h-excl")
    # The kernel looked "f" up and found nothing; then another client made it.
    await client.fs.write_file("/h-excl/f", b"theirs")
    assert await errno_of(ops.create(parent, b"f", 0o644, CREATE | os.O_EXCL, None)) \
        == errno.EEXIST
    assert await client.fs.read_file("/h-excl/f") == b"theirs"
    # Without O_EXCL, open(O_CREAT) opens their file as it is; O_TRUNC empties it.
    info, attrs = await ops.create(parent, b"f", 0o600, CREATE, None)
    assert (attrs.st_size, attrs.st_mode) == (6, statmod.S_IFREG | 0o644)
    await ops.release(info.fh)
    assert await client.fs.read_file("/h-excl/f") == b"theirs"
    info, attrs = await ops.create(parent, b"f", 0o600, CREATE | os.O_TRUNC, None)
    assert attrs.st_size == 0 and await client.fs.read_file("/h-excl/f") == b""
    await ops.release(info.fh)
    # mknod is exclusive too; a new name gets the mode asked for.
    assert await errno_of(ops.mknod(parent, b"f", statmod.S_IFREG | 0o600, 0, None)) \
        == errno.EEXIST
    info, attrs = await ops.create(parent, b"new", 0o4750, CREATE | os.O_EXCL, None)
    assert attrs.st_mode == statmod.S_IFREG | 0o4750
    await ops.release(info.fh)


@pytest.mark.asyncio
async def test_a_directory_changed_here_is_not_asked_for_again(client: aio.Client) -> None:
    counting = CountingFs(client.fs)
    ops = FarmOperations(counting, caching=Caching(attr_timeout=0.5, entry_timeout=0.5))
    clock = with_clock(ops, 0.5)
    parent = await volume(client, ops, "h-attrs")
    info, _ = await ops.create(parent, b"f", 0o644, CREATE, None)
    await ops.release(info.fh)
    counting.calls.clear()
    attrs = await ops.getattr(parent)  # the kernel asks after every change in the dir
    assert counting.calls["stat"] == 0
    assert attrs.st_size == 1 and 0 < attrs.attr_timeout <= 0.5
    assert attrs.st_mtime_ns == (await client.fs.stat("/h-attrs"))["mtime_ns"]
    # Another client's change shows once the timeout is over, never later.
    await client.fs.write_file("/h-attrs/g", b"")
    clock.now += 0.5
    assert (await ops.getattr(parent)).st_size == 2
    assert counting.calls["stat"] == 1
    # This mount's own changes are answered as they are, with the stat sent with them.
    ops.inodes.lookup(parent, "g")
    await ops.unlink(parent, b"g", None)
    await ops.setattr(parent, _mode_attrs(0o700), _fields(mode=True), None, None)
    attrs = await ops.getattr(parent)
    assert (attrs.st_size, attrs.st_mode) == (1, statmod.S_IFDIR | 0o700)
    assert counting.calls["stat"] == 3


@pytest.mark.asyncio
async def test_a_utime_answered_before_a_pending_write_is_set_again(
        client: aio.Client) -> None:
    counting = CountingFs(client.fs)
    ops = FarmOperations(counting)
    parent = await volume(client, ops, "h-utime")
    info, attrs = await ops.create(parent, b"f", 0o644, CREATE, None)
    await ops.write(info.fh, 0, b"data")
    # The write is held back, as a retry during a slot move would hold it: it lands
    # after the utime sent behind it, and moves the mtime when it does.
    counting.held["pwrite"] = asyncio.Event()
    when = 1_600_000_000_123_456_789
    setting = asyncio.ensure_future(ops.setattr(
        attrs.st_ino, _mtime_attrs(when), _fields(mtime=True), info.fh, None))
    while counting.calls["utime"] == 0:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the utime is answered while the write waits
    counting.held.pop("pwrite").set()
    assert (await setting).st_mtime_ns == when
    await ops.flush(info.fh)
    await ops.release(info.fh)
    st = await client.fs.stat("/h-utime/f")
    assert (st["mtime_ns"], st["size"]) == (when, 4)
    assert counting.calls["utime"] == 2  # set again once the write had landed


def _fields(mode: bool = False, mtime: bool = False) -> Any:
    """What ``pyfuse3.SetattrFields`` says (its fields are read-only from Python)."""
    return SimpleNamespace(update_atime=False, update_mtime=mtime, update_ctime=False,
                           update_mode=mode, update_uid=False, update_gid=False,
                           update_size=False)


def _mode_attrs(mode: int) -> pyfuse3.EntryAttributes:
    attrs = pyfuse3.EntryAttributes()
    attrs.st_mode = mode
    return attrs


def _mtime_attrs(mtime_ns: int) -> pyfuse3.EntryAttributes:
    attrs = pyfuse3.EntryAttributes()
    attrs.st_mtime_ns = mtime_ns
    return attrs


@pytest.mark.asyncio
async def test_a_directory_made_or_listed_here_answers_missing_names(
        client: aio.Client) -> None:
    counting = CountingFs(client.fs)
    ops = FarmOperations(counting, caching=Caching(attr_timeout=0.5, entry_timeout=0.5))
    clock = with_clock(ops, 0.5)
    parent = await volume(client, ops, "h-names")
    made = await ops.mkdir(parent, b"d", 0o755, None)
    counting.calls.clear()
    missing = await ops.lookup(made.st_ino, b"f")  # what create asks first
    assert missing.st_ino == 0 and 0 < missing.entry_timeout <= 0.5
    info, attrs = await ops.create(made.st_ino, b"f", 0o644, CREATE, None)
    await ops.release(info.fh)
    assert (await ops.lookup(made.st_ino, b"f")).st_ino == attrs.st_ino  # made here
    assert counting.calls["stat"] == 2  # the directory's behind the create, and f's
    # A name another client makes shows once the names are older than the timeout.
    await client.fs.write_file("/h-names/d/g", b"theirs")
    assert (await ops.lookup(made.st_ino, b"g")).st_ino == 0
    clock.now += 0.5
    assert (await ops.lookup(made.st_ino, b"g")).st_size == 6
    assert counting.calls["listdir"] == 1  # the names were worth taking again
    # Names the farm must judge are never answered from the listing.
    assert await errno_of(ops.lookup(made.st_ino, b"x" * 256)) == errno.ENAMETOOLONG
    # Removing here is seen here at once.
    await ops.unlink(made.st_ino, b"f", None)
    stats = counting.calls["stat"]
    assert (await ops.lookup(made.st_ino, b"f")).st_ino == 0
    assert counting.calls["stat"] == stats


@pytest.mark.asyncio
async def test_a_mode_and_mtime_set_on_an_open_file_land_by_close(
        client: aio.Client) -> None:
    counting = CountingFs(client.fs)
    ops = FarmOperations(counting)
    parent = await volume(client, ops, "h-later")
    info, attrs = await ops.create(parent, b"f", 0o600, CREATE, None)
    await ops.write(info.fh, 0, b"data")
    when = 1_500_000_000_000_000_000
    counting.held["chmod"] = asyncio.Event()  # the farm is slow to answer the chmod
    answer = await ops.setattr(attrs.st_ino, _mode_attrs(0o640), _fields(mode=True),
                               None, None)  # fchmod: answered without waiting
    assert answer.st_mode == statmod.S_IFREG | 0o640
    answer = await ops.setattr(attrs.st_ino, _mtime_attrs(when), _fields(mtime=True),
                               None, None)
    assert (answer.st_mtime_ns, answer.st_size) == (when, 4)
    assert (await ops.getattr(attrs.st_ino)).st_mode == statmod.S_IFREG | 0o640
    closing = asyncio.ensure_future(ops.flush(info.fh))
    await asyncio.sleep(0.05)
    assert not closing.done()  # close waits for them, as for the writes
    counting.held.pop("chmod").set()
    await closing
    st = await client.fs.stat("/h-later/f")
    assert (st["mode"], st["mtime_ns"], st["size"]) == (statmod.S_IFREG | 0o640, when, 4)
    # A change the farm refuses is reported by the next close, as a failed write.
    await client.fs.unlink("/h-later/f")
    await ops.setattr(attrs.st_ino, _mode_attrs(0o600), _fields(mode=True), None, None)
    assert await errno_of(ops.flush(info.fh)) == errno.ENOENT
    await ops.release(info.fh)


@pytest.mark.asyncio
async def test_a_walk_through_a_directory_fetches_the_next_names_ahead(
        client: aio.Client) -> None:
    counting = CountingFs(client.fs)
    ops = FarmOperations(counting)
    clock = with_clock(ops, 1.0)
    parent = await volume(client, ops, "h-ahead")
    names = [f"f{i}".encode() for i in range(60)]
    for name in names:
        info, _ = await ops.create(parent, name, 0o644, CREATE, None)
        await ops.write(info.fh, 0, name)
        await ops.release(info.fh)
    clock.now += 1.0  # the kernel has forgotten them all: it asks again
    asked = 0
    for name in names:
        before = counting.calls["stat"]
        attrs = await ops.lookup(parent, name, None)
        assert attrs.st_size == len(name)
        asked += counting.calls["stat"] > before
    assert asked <= 6  # one round trip per window, the windows doubling
    # Lookups out of order fetch only what they ask for.
    clock.now += 1.0
    before = counting.calls["stat"]
    for name in names[::7]:
        await ops.lookup(parent, name, None)
    assert counting.calls["stat"] - before == len(names[::7])


@pytest.mark.asyncio
async def test_a_create_of_a_name_known_missing_is_not_waited_for(client: aio.Client) -> None:
    counting = CountingFs(client.fs)
    ops = FarmOperations(counting)
    parent = await volume(client, ops, "h-behind")
    made = await ops.mkdir(parent, b"d", 0o755, None)  # its names are known: none
    # The farm is slow to take the create: open(O_CREAT) is answered all the same, and
    # the write sent behind it, refused (no such file yet), is sent again after it.
    counting.held["create"] = asyncio.Event()
    info, attrs = await asyncio.wait_for(  # a deadline: it must not wait for the farm
        ops.create(made.st_ino, b"f", 0o600, CREATE | os.O_TRUNC, None), 10)
    assert (attrs.st_size, attrs.st_mode) == (0, statmod.S_IFREG | 0o600)
    await ops.write(info.fh, 0, b"data")
    closing = asyncio.ensure_future(ops.flush(info.fh))
    await asyncio.sleep(0.05)
    assert not closing.done()  # close waits for the create and the write
    counting.held.pop("create").set()
    await closing
    await ops.release(info.fh)
    st = await client.fs.stat("/h-behind/d/f")
    assert (st["size"], st["mode"]) == (4, statmod.S_IFREG | 0o600)
    assert counting.calls["pwrite"] == 2
    # Another client made the name after the listing: O_TRUNC still empties their file
    # before this mount's writes land.
    await client.fs.write_file("/h-behind/d/g", b"their longer data")
    info, _ = await ops.create(made.st_ino, b"g", 0o644, CREATE | os.O_TRUNC, None)
    await ops.write(info.fh, 0, b"mine")
    await ops.flush(info.fh)
    await ops.release(info.fh)
    assert await client.fs.read_file("/h-behind/d/g") == b"mine"
    # A create waits for the file's first write to go with it, but not for long: a file
    # opened and left so shows on the farm all the same.
    info, _ = await ops.create(made.st_ino, b"quiet", 0o644, CREATE, None)
    async with asyncio.timeout(10):
        while "quiet" not in await client.fs.listdir("/h-behind/d"):
            await asyncio.sleep(0.01)
    await ops.release(info.fh)
    # O_EXCL is always the farm's to judge, before open returns.
    counting.held["create"] = asyncio.Event()
    creating = asyncio.ensure_future(
        ops.create(made.st_ino, b"h", 0o644, CREATE | os.O_EXCL, None))
    await asyncio.sleep(0.05)
    assert not creating.done()
    counting.held.pop("create").set()
    info, _ = await creating
    await ops.release(info.fh)


@pytest.mark.asyncio
async def test_a_create_not_waited_for_reports_its_failure_at_close(
        client: aio.Client) -> None:
    ops = FarmOperations(client.fs)
    parent = await volume(client, ops, "h-gone")
    made = await ops.mkdir(parent, b"d", 0o755, None)
    await client.fs.rmdir("/h-gone/d")  # another client removes the directory
    info, _ = await ops.create(made.st_ino, b"f", 0o644, CREATE, None)
    await ops.write(info.fh, 0, b"lost")
    assert await errno_of(ops.flush(info.fh)) == errno.ENOENT
    await ops.release(info.fh)
    # What the directory holds is the farm's to say again.
    assert await errno_of(ops.lookup(made.st_ino, b"f")) == errno.ENOENT


@pytest.mark.asyncio
async def test_a_write_refused_before_the_close_is_reported_by_the_close(
        client: aio.Client) -> None:
    """The farm's refusal may be in before the kernel sends ``flush``: nothing is on its
    way any more, and the error must still be the close's, whatever asked meanwhile."""
    ops = FarmOperations(client.fs, chunk_bytes=4)  # a 4-byte write leaves at once
    parent = await volume(client, ops, "h-efbig")
    info, attrs = await ops.create(parent, b"f", 0o644, CREATE | os.O_EXCL, None)
    await ops.write(info.fh, 8 * 1024 * 1024, b"past")  # max_file_bytes is 8 MiB
    behind = ops.files.pending[attrs.st_ino]
    deadline = time.monotonic() + 10
    while not behind.idle:  # the refusal is in
        assert time.monotonic() < deadline
        await asyncio.sleep(0.001)
    # Calls that only wait for the writes (a lookup by `ls`, a read) leave it to the close.
    ops.cache.changed(attrs.st_ino)
    assert (await ops.lookup(parent, b"f", None)).st_ino == attrs.st_ino
    assert await ops.read(info.fh, 0, 4) == b""
    assert await errno_of(ops.flush(info.fh)) == errno.EFBIG
    await ops.flush(info.fh)  # reported once
    await ops.release(info.fh)

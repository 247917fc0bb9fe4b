"""``client.fs``: the fs methods as Python calls.

They sit on the client's ``call(method, *params)``, which routes by the volume of the
first parameter and raises the matching ``OSError`` (``FileNotFoundError`` for
``ENOENT``...), and on ``call_all``, which asks every kernel: listing ``/`` merges the
volumes of all kernels.  Every method takes the path it acts on first — ``symlink(path,
target)`` too, unlike ``os.symlink`` — because the first parameter is the partition key.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable


def merge_volumes(per_kernel: list[list[str]]) -> list[str]:
    """One sorted list of volumes from every kernel's answer (a moving slot may show twice)."""
    names: set[str] = set()
    for listing in per_kernel:
        names.update(listing)
    return sorted(names)


def merge_statfs(per_kernel: list[dict[str, Any]]) -> dict[str, Any]:
    """``fs.statfs("/")`` of the whole farm: the use of every kernel's volumes added up."""
    total = dict(per_kernel[0])
    for key in ("volumes", "bytes_used", "inodes_used"):
        total[key] = sum(part[key] for part in per_kernel)
    return total


class AsyncFsApi:
    """``client.fs``."""

    def __init__(self, call: Callable[..., Awaitable[Any]],
                 call_all: Callable[..., Awaitable[list[Any]]]) -> None:
        self._call = call
        self._call_all = call_all

    async def mkdir(self, path: str, mode: int = 0o755) -> None:
        await self._call("fs.mkdir", path, mode)

    async def rmdir(self, path: str) -> None:
        await self._call("fs.rmdir", path)

    async def listdir(self, path: str = "/") -> list[str]:
        if path == "/":
            return merge_volumes(await self._call_all("fs.listdir", path))
        return list(await self._call("fs.listdir", path))

    async def stat(self, path: str) -> dict[str, Any]:
        return dict(await self._call("fs.stat", path))

    async def write_file(self, path: str, data: bytes) -> None:
        await self._call("fs.write_file", path, data)

    async def create(self, path: str, mode: int = 0o644, exclusive: bool = False,
                     truncate: bool = False) -> dict[str, Any]:
        """``open(O_CREAT[|O_EXCL][|O_TRUNC])``: a new empty file, or the one there
        (emptied if ``truncate``); its stat."""
        return dict(await self._call("fs.create", path, mode, exclusive, truncate))

    async def read_file(self, path: str) -> bytes:
        return bytes(await self._call("fs.read_file", path))

    async def pread(self, path: str, offset: int, size: int) -> bytes:
        return bytes(await self.pread_buffer(path, offset, size))

    async def pread_buffer(self, path: str, offset: int, size: int) -> bytes | bytearray:
        """``pread`` as received, not copied into ``bytes``: a big result (64 KiB or more)
        is the ``bytearray`` the connection read it into (``kernelfarm mount``'s reads)."""
        data: bytes | bytearray = await self._call("fs.pread", path, offset, size)
        return data

    async def pwrite(self, path: str, offset: int, data: bytes) -> int:
        return int(await self._call("fs.pwrite", path, offset, data))

    async def truncate(self, path: str, size: int) -> None:
        await self._call("fs.truncate", path, size)

    async def unlink(self, path: str) -> None:
        await self._call("fs.unlink", path)

    async def rename(self, src: str, dst: str) -> None:
        await self._call("fs.rename", src, dst)

    async def fsync(self, path: str) -> None:
        await self._call("fs.fsync", path)

    async def symlink(self, path: str, target: str) -> None:
        await self._call("fs.symlink", path, target)

    async def readlink(self, path: str) -> str:
        return str(await self._call("fs.readlink", path))

    async def chmod(self, path: str, mode: int) -> None:
        await self._call("fs.chmod", path, mode)

    async def utime(self, path: str, mtime_ns: int) -> None:
        await self._call("fs.utime", path, mtime_ns)

    async def statfs(self, path: str = "/") -> dict[str, Any]:
        if path == "/":
            return merge_statfs(await self._call_all("fs.statfs", path))
        return dict(await self._call("fs.statfs", path))

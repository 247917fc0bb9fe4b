# Generated from kernelfarm/client/_async/fs.py by kernelfarm.client.unasync: do not edit.
"""``client.fs``: the fs methods as Python calls.

They sit on the client's ``call(method, *params)``, which routes by the volume of the
first parameter and raises the matching ``OSError`` (``FileNotFoundError`` for
``ENOENT``...), and on ``call_all``, which asks every kernel: listing ``/`` merges the
volumes of all kernels.  Every method takes the path it acts on first — ``symlink(path,
target)`` too, unlike ``os.symlink`` — because the first parameter is the partition key.
"""

from __future__ import annotations

from typing import Any, Callable


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


class FsApi:
    """``client.fs``."""

    def __init__(self, call: Callable[..., Any],
                 call_all: Callable[..., list[Any]]) -> None:
        self._call = call
        self._call_all = call_all

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self._call("fs.mkdir", path, mode)

    def rmdir(self, path: str) -> None:
        self._call("fs.rmdir", path)

    def listdir(self, path: str = "/") -> list[str]:
        if path == "/":
            return merge_volumes(self._call_all("fs.listdir", path))
        return list(self._call("fs.listdir", path))

    def stat(self, path: str) -> dict[str, Any]:
        return dict(self._call("fs.stat", path))

    def write_file(self, path: str, data: bytes) -> None:
        self._call("fs.write_file", path, data)

    def create(self, path: str, mode: int = 0o644, exclusive: bool = False,
                     truncate: bool = False) -> dict[str, Any]:
        """``open(O_CREAT[|O_EXCL][|O_TRUNC])``: a new empty file, or the one there
        (emptied if ``truncate``); its stat."""
        return dict(self._call("fs.create", path, mode, exclusive, truncate))

    def read_file(self, path: str) -> bytes:
        return bytes(self._call("fs.read_file", path))

    def pread(self, path: str, offset: int, size: int) -> bytes:
        return bytes(self.pread_buffer(path, offset, size))

    def pread_buffer(self, path: str, offset: int, size: int) -> bytes | bytearray:
        """``pread`` as received, not copied into ``bytes``: a big result (64 KiB or more)
        is the ``bytearray`` the connection read it into (``kernelfarm mount``'s reads)."""
        data: bytes | bytearray = self._call("fs.pread", path, offset, size)
        return data

    def pwrite(self, path: str, offset: int, data: bytes) -> int:
        return int(self._call("fs.pwrite", path, offset, data))

    def truncate(self, path: str, size: int) -> None:
        self._call("fs.truncate", path, size)

    def unlink(self, path: str) -> None:
        self._call("fs.unlink", path)

    def rename(self, src: str, dst: str) -> None:
        self._call("fs.rename", src, dst)

    def fsync(self, path: str) -> None:
        self._call("fs.fsync", path)

    def symlink(self, path: str, target: str) -> None:
        self._call("fs.symlink", path, target)

    def readlink(self, path: str) -> str:
        return str(self._call("fs.readlink", path))

    def chmod(self, path: str, mode: int) -> None:
        self._call("fs.chmod", path, mode)

    def utime(self, path: str, mtime_ns: int) -> None:
        self._call("fs.utime", path, mtime_ns)

    def statfs(self, path: str = "/") -> dict[str, Any]:
        if path == "/":
            return merge_statfs(self._call_all("fs.statfs", path))
        return dict(self._call("fs.statfs", path))

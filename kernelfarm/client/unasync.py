"""Generate the blocking client from the asyncio one (httpcore's ``unasync`` idea).

Both clients must offer the same methods with the same arguments and retry the same way;
two hand-kept copies drift apart.  So the client is written once, for asyncio, under
``client/_async/``, and ``client/_sync/`` is this token rewrite of it:

- ``async def``/``async with``/``async for`` lose ``async``, ``await`` disappears;
- ``__aenter__``/``__aexit__`` become ``__enter__``/``__exit__``;
- ``AsyncName`` becomes ``Name``, ``_async`` becomes ``_sync``, ``Awaitable[T]`` is ``T``;
- a line ending in ``# async only`` (or with ``# async only:`` in its comment) is dropped;
- a line ``# sync only: CODE`` becomes ``CODE``.

``io.py`` of each face is written by hand: it is where the faces really differ (sleeping,
gathering, the connection class).  ``python -m kernelfarm.client.unasync`` rewrites
``_sync/``; ``--check`` exits 1 if it is out of date (``tests/client/test_unasync.py``
does the same check in the suite).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_async"
TARGET = HERE / "_sync"
GENERATED = ("farm.py", "fs.py", "net.py")

HEADER = ("# Generated from kernelfarm/client/_async/{name} by kernelfarm.client.unasync: "
          "do not edit.\n")

TOKENS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"\basync (def|with|for)\b"), r"\1"),
    (re.compile(r"\bawait "), ""),
    (re.compile(r"\b__aenter__\b"), "__enter__"),
    (re.compile(r"\b__aexit__\b"), "__exit__"),
    (re.compile(r"\bAsync([A-Z]\w*)"), r"\1"),
    (re.compile(r"\b_async\b"), "_sync"),
    (re.compile(r"\bRpcClientConnection\b"), "BlockingConnection"),
    (re.compile(r"Awaitable\[((?:[^\[\]]|\[[^\[\]]*\])*)\]"), r"\1"),
    (re.compile(r", Awaitable\b"), ""),
]
SYNC_ONLY = re.compile(r"^(\s*)# sync only: (.*)$")
ASYNC_ONLY = re.compile(r"#.*\basync only\b")


def unasync_line(line: str) -> str | None:
    """One line of the blocking face, or ``None`` when the line exists only in asyncio."""
    only_sync = SYNC_ONLY.match(line)
    if only_sync:
        return only_sync.group(1) + only_sync.group(2)
    if ASYNC_ONLY.search(line):
        return None
    for pattern, replacement in TOKENS:
        line = pattern.sub(replacement, line)
    return line


def unasync(text: str, name: str) -> str:
    lines = (unasync_line(line) for line in text.splitlines())
    return HEADER.format(name=name) + "\n".join(
        line for line in lines if line is not None) + "\n"


def expected() -> dict[Path, str]:
    """What each generated file must hold."""
    return {TARGET / name: unasync((SOURCE / name).read_text(), name) for name in GENERATED}


def main(argv: list[str]) -> int:
    stale = [path for path, text in expected().items()
             if not path.exists() or path.read_text() != text]
    if "--check" in argv:
        for path in stale:
            print(f"{path} is out of date: run python -m kernelfarm.client.unasync")
        return 1 if stale else 0
    for path, text in expected().items():
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

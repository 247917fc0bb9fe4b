"""A kernel keeps the memory its deleted files freed: the next stream reuses it instead of
taking fresh pages the host must zero (:mod:`kernelfarm.kernel.heap`)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from farmctl import start_farm
from kernelfarm.kernel import heap

STREAM = textwrap.dedent("""
    import resource, sys
    from kernelfarm.kernel.heap import keep_freed_memory
    if sys.argv[1] == "kept":
        assert keep_freed_memory()
    def stream():  # a file streamed in as 1 MiB blocks, then deleted
        blocks = [bytearray(1 << 20) for _ in range(64)]
        del blocks
    stream()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    stream()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def faults_of_a_second_stream(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", STREAM, mode], capture_output=True,
                          text=True, timeout=60, check=True)
    return int(done.stdout)


def test_a_second_stream_reuses_what_the_first_freed() -> None:
    """64 MiB written as 1 MiB blocks and freed, twice: kept, the second pass faults in
    (almost) no page; with glibc's defaults ("default": the guarantee off) it faults in
    every one of its 16,384 pages again."""
    assert heap.glibc()  # the suite's machines run glibc: the check must not be skipped
    kept, default = faults_of_a_second_stream("kept"), faults_of_a_second_stream("default")
    assert kept < 256
    assert default > 8 * 1024


def test_a_kernel_boots_with_its_heap_kept(tmp_path: Path) -> None:
    """The kernel process itself: a 4 MiB file deleted leaves its memory with the kernel
    (glibc's defaults map a block that big on its own and unmap it when it is freed)."""
    with start_farm(tmp_path, 1) as farm:
        (kernel,) = farm.kernel_procs()
        client = farm.client()
        client.fs.mkdir("/v")
        client.fs.write_file("/v/big", bytes(4 << 20))
        rss_with = kernel.memory_info().rss
        client.fs.unlink("/v/big")
        assert kernel.memory_info().rss > rss_with - (2 << 20)

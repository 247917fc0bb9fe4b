"""A process keeps the memory its freed big blocks held: the next stream reuses it instead
of taking fresh pages the host must zero (:mod:`kernelfarm.heap`; kernels and mounts)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from farmctl import start_farm
from kernelfarm import heap

STREAM = textwrap.dedent("""
    import ctypes, resource, sys
    from kernelfarm.heap import keep_freed_memory, M_TOP_PAD
    mode, keep_mib, stream_mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if mode != "default":
        assert keep_freed_memory(keep_mib << 20)
    if mode == "no-pad":  # the threshold alone, as before M_TOP_PAD was set
        ctypes.CDLL(None).mallopt(M_TOP_PAD, 128 << 10)
    def stream():  # a file streamed in as 1 MiB blocks, then deleted
        blocks = [bytearray(1 << 20) for _ in range(stream_mib)]
        del blocks
    stream()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    stream()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")

PAGES_PER_MIB = 256


def faults_of_a_second_stream(mode: str, keep_mib: int = 256, stream_mib: int = 64) -> int:
    done = subprocess.run([sys.executable, "-c", STREAM, mode, str(keep_mib),
                           str(stream_mib)], capture_output=True, text=True, timeout=60,
                          check=True)
    return int(done.stdout)


def test_a_second_stream_reuses_what_the_first_freed() -> None:
    """64 MiB written as 1 MiB blocks and freed, twice: kept, the second pass faults in
    (almost) no page; with glibc's defaults ("default": the guarantee off) it faults in
    every one of its 16,384 pages again."""
    assert heap.glibc()  # the suite's machines run glibc: the check must not be skipped
    kept, default = faults_of_a_second_stream("kept"), faults_of_a_second_stream("default")
    assert kept < 256
    assert default > 8 * 1024


def test_a_stream_bigger_than_what_is_kept_still_reuses_that_much() -> None:
    """64 MiB streamed twice with 32 MiB kept: glibc trims the top of the heap down to
    ``M_TOP_PAD``, not to the threshold, so with the threshold alone ("no-pad": the
    mount bench's 256 MiB file against a kernel's 256 MiB) the second stream faulted in
    all of its pages again; with the pad it takes only the 32 MiB not kept."""
    kept = faults_of_a_second_stream("kept", keep_mib=32)
    no_pad = faults_of_a_second_stream("no-pad", keep_mib=32)
    assert kept < 40 * PAGES_PER_MIB
    assert no_pad > 60 * PAGES_PER_MIB


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

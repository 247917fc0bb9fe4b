"""The optional compiled accelerator: a kernel says which modules it runs compiled, and
each pass of ``./kf test`` runs what it claims to (``kernelfarm.accel``).

``./kf test`` runs the whole suite pure, then (with a C compiler) this directory and the
other request-path ones again with ``.accel/`` first on the path and
``KERNELFARM_ACCEL=1``: this test then fails unless the farm's kernels really load every
compiled module, and in the pure pass unless they load none (a build left in the
checkout would make the "pure" pass test compiled code).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from pathlib import Path

import pytest

import kernelfarm.kernel.kernel
from farmctl import raw_call, start_farm
from kernelfarm import accel
from kernelfarm import steps as stepping
from kernelfarm.cli.status import title_of
from kernelfarm.steps import Steps, run_sliced

EXPECTED = list(accel.MODULES) if os.environ.get("KERNELFARM_ACCEL") == "1" else []


def test_the_kernels_run_compiled_exactly_when_this_pass_says_so(tmp_path: Path) -> None:
    with start_farm(tmp_path, 1) as farm:
        [kernel] = farm.cluster_map()["kernels"]
        stats = raw_call(tuple(kernel["addr"]), "kernel.stats")
        assert stats["compiled"] == EXPECTED
        assert f"compiled: {', '.join(EXPECTED) or 'none'}" in farm.log()
        status = raw_call(farm.control, "cluster.status")
    assert [row["stats"]["compiled"] for row in status["kernels"]] == [EXPECTED]
    assert (f"{len(EXPECTED)} modules compiled" in title_of(status)) == bool(EXPECTED)


def test_this_process_imports_what_the_kernels_do() -> None:
    """The tests that build kernels in-process (handler_cost, counters) run the same code."""
    loaded = kernelfarm.kernel.kernel.__file__ or ""
    assert loaded.endswith(".py") == (not EXPECTED), loaded
    assert set(accel.compiled()) <= set(EXPECTED)


@pytest.mark.asyncio
async def test_stepped_work_cancelled_between_slices_cleans_up_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel's loading (``Kernel.loading``: the cyclic GC paused until it ends) is
    stepped work; if its task is cancelled, the work's ``finally`` must run then.  A
    compiled generator runs it only when closed, never when dropped, so ``run_sliced``
    closes it; the test keeps a reference, so dropping cannot be what runs it."""
    monkeypatch.setattr(stepping, "SLICE_S", 0.0)  # the loop gets a turn after every step
    cleaned: list[str] = []
    stepped = asyncio.Event()

    def forever() -> Steps[None]:
        try:
            while True:
                stepped.set()
                yield
        finally:
            cleaned.append("finally")

    work = forever()
    task = asyncio.ensure_future(run_sliced(work))
    await stepped.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == ["finally"]
    assert inspect.getgeneratorstate(work) == inspect.GEN_CLOSED  # and still referenced here

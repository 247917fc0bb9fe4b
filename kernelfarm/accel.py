"""The optional compiled accelerator: which modules mypyc compiles, and which run compiled.

The request path is plain Python and stays the reference.  Built with ``./kf accel``
(``tools/build_accel.py``: ``setup.py`` with ``KERNELFARM_ACCEL=1`` runs mypyc on
:data:`MODULES`), the same sources become C extension modules, installed into a
directory of their own (``.accel/``) that a run puts first on ``PYTHONPATH``
(``KERNELFARM_ACCEL=1 ./kf serve``); the checkout and its ``.venv`` stay pure.  A
machine without a C compiler skips the build and runs the pure path.

These are the modules of the ``fs.stat``/``fs.write_file`` request path whose own
Python work is measurable per request (benchmarks/README.md, "The compiled
accelerator"), and the net data path: ``net.send``/``net.recv`` themselves, their sockets
and waiting-call answers (a waiting ``net.recv`` is settled by the socket's readiness);
the rest only runs on a slow path or waits on the host.  Compiled code
checks the annotations of what crosses a function boundary, so in these modules a
value a client chose (a path, an offset) is annotated as what it may be (``Any``),
never as what it should be: the handler's own check refuses it in the contract's words.

Left interpreted on purpose: ``rpc/server.py`` (its connections are weakly referenced,
which a compiled class is not unless marked), ``fs/journal.py`` (its readers are
generators holding an open file; a compiled generator dropped before its end does not
run its ``with``/``finally``, an interpreted one does) and ``net/subsystem.py`` (a
compiled ``async def`` has no signature, which ``Params`` reads the parameter count
from, and is no coroutine function to ``inspect``, which its failure counting asks;
its data calls live in ``net/datapath.py`` so that they compile).

A leaf: it imports nothing of kernelfarm, so the build reads it from its file.
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES

MODULES = (
    "kernelfarm.rpc.protocol",
    "kernelfarm.kernel.kernel",
    "kernelfarm.kernel.commit",
    "kernelfarm.fs.paths",
    "kernelfarm.fs.tree",
    "kernelfarm.fs.volume",
    "kernelfarm.fs.space",
    "kernelfarm.fs.params",
    "kernelfarm.fs.subsystem",
    "kernelfarm.net.sockets",
    "kernelfarm.net.datapath",
    "kernelfarm.rpc.answer",
)
"""What ``KERNELFARM_ACCEL=1`` compiles, as module names."""


def compiled() -> list[str]:
    """The modules of :data:`MODULES` this process has loaded from a compiled extension
    (a kernel loads them all; a module not imported yet is not listed)."""
    names = []
    for name in MODULES:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None) or ""
        if path.endswith(tuple(EXTENSION_SUFFIXES)):
            names.append(name)
    return names

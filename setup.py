"""setuptools' hook for the optional compiled accelerator; the package is in pyproject.toml.

With ``KERNELFARM_ACCEL=1`` in the environment the modules listed in
``kernelfarm/accel.py`` are compiled to C extension modules with mypyc; without it (every
``pip install`` and ``./kf`` install) the package is pure Python.  The compiled build
needs mypy and setuptools in the building environment (the ``accel`` extra) and a C
compiler: ``tools/build_accel.py`` checks both and builds with ``--no-build-isolation``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from setuptools import setup

HERE = Path(__file__).resolve().parent


COMPILING = os.environ.get("KERNELFARM_ACCEL") == "1"
BUILD_BASE = os.environ.get("KERNELFARM_ACCEL_BUILD", "build")
"""Where a compiled build keeps its C sources and objects: build_accel.py gives each
build a fresh one, so nothing of an earlier build (a module no longer compiled) is
installed with it."""


def accelerated() -> list[Any]:
    """The extension modules of a compiled build, or none."""
    if not COMPILING:
        return []
    from mypyc.build import mypycify

    spec = importlib.util.spec_from_file_location("accel", HERE / "kernelfarm" / "accel.py")
    assert spec is not None and spec.loader is not None
    accel = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accel)
    sources = [name.replace(".", "/") + ".py" for name in accel.MODULES]
    extensions: list[Any] = mypycify(sources, target_dir=os.path.join(BUILD_BASE, "mypyc"))
    return extensions


setup(ext_modules=accelerated(),
      options={"build": {"build_base": BUILD_BASE}} if COMPILING else {})

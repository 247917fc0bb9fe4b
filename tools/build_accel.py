"""Build the optional compiled accelerator into a directory of its own, or skip it.

``./kf accel`` and the compiled pass of ``./kf test`` run this with the checkout's
``.venv`` python.  It compiles the modules of :data:`kernelfarm.accel.MODULES` with mypyc
(``setup.py`` with ``KERNELFARM_ACCEL=1``) and installs the whole package, compiled
modules beside the pure ones, into ``--target`` (``.accel/``).  A run uses it by putting
that directory first on ``PYTHONPATH`` with ``PYTHONSAFEPATH=1`` (so ``python -m`` in the
checkout does not put the pure sources first); ``.venv`` and the checkout stay pure.

Exit status: 0 built (or already built from these sources), 3 skipped because no
working C compiler or no Python headers are there (the pure path runs: that is not a
failure), 1 the build failed, 2 the build tools (the ``accel`` extra) are missing.
The build is skipped, not failed, without a compiler, so a machine without one installs
and tests the pure path as before.

    python tools/build_accel.py [--target .accel] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILT, FAILED, MISSING_TOOLS, SKIPPED = 0, 1, 2, 3
STAMP = ".sources.sha256"
"""In the target: the hash of the sources and tools it was built from."""
PROBE = "#include <Python.h>\nint kernelfarm_probe(void) { return 0; }\n"


def compiler_missing() -> str | None:
    """Why no extension module can be compiled here, or ``None`` if one can.

    Compiles a file that includes ``Python.h`` with the compiler setuptools would use
    (``$CC``, else the one Python was built with), so a missing compiler, a broken one
    and missing headers are all found before the build starts.
    """
    command = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory(prefix="kernelfarm-accel-probe-") as where:
        source = Path(where) / "probe.c"
        source.write_text(PROBE)
        try:
            result = subprocess.run([*command, "-I", include, "-c", str(source), "-o",
                                     str(Path(where) / "probe.o")],
                                    capture_output=True, text=True, timeout=60)
        except OSError as exc:
            return f"cannot run the C compiler {command[0]!r}: {exc.strerror}"
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return f"the C compiler {command[0]!r} failed on a file including Python.h: {detail}"
    return None


def tools_missing() -> str | None:
    """Why mypyc cannot build here (the ``accel`` extra not installed), or ``None``."""
    for module in ("mypyc", "setuptools"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[accel]')"
    return None


def sources_hash() -> str:
    """What a build depends on: every module of the package (the target holds them all),
    the build hook, the project file, and the interpreter and mypy doing the build."""
    import mypy.version

    digest = hashlib.sha256(f"{sys.version}\n{mypy.version.__version__}\n".encode())
    files = sorted((ROOT / "kernelfarm").rglob("*.py")) + [ROOT / "setup.py",
                                                           ROOT / "pyproject.toml"]
    for path in files:
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def build(target: Path, stamp: str) -> bool:
    """Compile and install into a fresh directory, then swap it in as ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f"{target.name}.", dir=target.parent))
    fresh.chmod(0o755)  # as pip would make it; mkdtemp makes it private
    log = fresh.parent / f"{target.name}.log"
    objects = Path(tempfile.mkdtemp(prefix=f"{target.name}-build.", dir=target.parent))
    try:
        with log.open("w") as out:
            result = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--disable-pip-version-check",
                 "--no-deps", "--no-build-isolation", "--target", str(fresh), str(ROOT)],
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "KERNELFARM_ACCEL": "1",
                     "KERNELFARM_ACCEL_BUILD": str(objects)})
        if result.returncode != 0:
            print(f"accel: the build failed (log: {log}):", file=sys.stderr)
            print("\n".join(log.read_text().splitlines()[-20:]), file=sys.stderr)
            return False
        (fresh / STAMP).write_text(stamp + "\n")
        shutil.rmtree(target, ignore_errors=True)
        fresh.rename(target)
        return True
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(objects, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=Path, default=ROOT / ".accel",
                        help="where the compiled package goes (default: .accel)")
    parser.add_argument("--force", action="store_true", help="build even if up to date")
    args = parser.parse_args(argv)
    target: Path = args.target.resolve()
    reason = compiler_missing()
    if reason is not None:
        print(f"accel: skipped, the pure-Python path runs: {reason}", file=sys.stderr)
        return SKIPPED
    reason = tools_missing()
    if reason is not None:
        print(f"accel: cannot build: {reason}", file=sys.stderr)
        return MISSING_TOOLS
    stamp = sources_hash()
    stamp_file = target / STAMP
    if not args.force and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        print(f"accel: {target} is up to date", file=sys.stderr)
        return BUILT
    print(f"accel: compiling {ROOT / 'kernelfarm/accel.py'}'s modules with mypyc into "
          f"{target}", file=sys.stderr)
    return BUILT if build(target, stamp) else FAILED


if __name__ == "__main__":
    sys.exit(main())

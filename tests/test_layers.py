"""The layers of the package, enforced from its imports (read with ``ast``, not by running).

Layers point down.  Leaves (errors, partition keys, ``HOST:PORT``, the sans-I/O protocol,
the slot table, the boot message) serve both sides and import only other leaves.  Client
code imports only rpc, partition, errors and the leaves, so a program that talks to the
farm never loads kernel or supervisor code.  The supervisor imports no kernel module, the
kernel side imports no client, supervisor or CLI module, and the package root imports
nothing eagerly, so a kernel process does not load the client stack.

Every ``import`` counts, also one inside a function (a lazy import is still a dependency);
only ``if TYPE_CHECKING:`` blocks are exempt, since they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kernelfarm"

LEAVES = ("kernelfarm.errors", "kernelfarm.keys", "kernelfarm.hostport",
          "kernelfarm.settings", "kernelfarm.boot", "kernelfarm.partition",
          "kernelfarm.rpc.protocol", "kernelfarm.rpc.meter", "kernelfarm.rpc.answer",
          "kernelfarm.handoff", "kernelfarm.ratelog", "kernelfarm.durable",
          "kernelfarm.auth.tokens", "kernelfarm.heap")
"""Modules (and packages) both sides may use; they import only each other."""

CLIENT = ("kernelfarm.client", "kernelfarm.aio", "kernelfarm.rpc.client",
          "kernelfarm.rpc.blocking")
"""What a program that talks to the farm loads."""

SECTIONS = ("kernelfarm.config", "kernelfarm.fs.config", "kernelfarm.net.config",
            "kernelfarm.auth.config")
"""The config and the sections it lists: plain data, loaded by every process."""

KERNEL = ("kernelfarm.kernel", "kernelfarm.fs", "kernelfarm.net")
"""What runs in a kernel process (minus the client modules that live beside it)."""

SERVER = ("kernelfarm.rpc.server",)
"""Serving msgpack-rpc: the kernels and the supervisor's control port."""


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, *, top_level_only: bool = False) -> set[str]:
    """The kernelfarm modules ``path`` imports (``from a import b`` counts ``a.b`` when
    ``b`` is a module), outside ``if TYPE_CHECKING:``."""
    package = module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt], nested: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and is_type_checking(node):
                visit(node.orelse, nested)
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found.add(base)
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    if exists(candidate):
                        found.add(candidate)
            for field in ("body", "orelse", "finalbody", "handlers"):
                children = getattr(node, field, None)
                if not children or (top_level_only and isinstance(
                        node, (ast.FunctionDef, ast.AsyncFunctionDef))):
                    continue
                if field == "handlers":
                    for handler in children:
                        visit(handler.body, True)
                else:
                    visit(children, True)

    visit(ast.parse(path.read_text(), str(path)).body, False)
    return {name for name in found if name == "kernelfarm" or name.startswith("kernelfarm.")}


def exists(module: str) -> bool:
    relative = Path(*module.split("."))
    base = PACKAGE.parent / relative
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def offences(rule: str, allowed: Callable[[str, str], bool]) -> list[str]:
    """Every import that ``allowed(importer, imported)`` refuses, named for the report."""
    return [f"{rule}: {src} imports {dst}" for src, dsts in sorted(GRAPH.items())
            for dst in sorted(dsts) if not allowed(src, dst)]


def test_the_graph_was_read() -> None:
    assert "kernelfarm.client.routing" in GRAPH
    assert "kernelfarm.keys" in GRAPH["kernelfarm.client.routing"]


def test_leaves_import_only_leaves() -> None:
    assert offences("leaf", lambda src, dst: not within(src, LEAVES) or within(dst, LEAVES)
                    or dst == "kernelfarm") == []


def test_client_code_imports_only_rpc_partition_errors_and_leaves() -> None:
    assert offences("client", lambda src, dst: not within(src, CLIENT)
                    or within(dst, CLIENT + LEAVES) or dst == "kernelfarm") == []


def test_front_ends_are_clients_of_the_farm() -> None:
    """The mount, the SOCKS proxy (and any front-end) talk to the farm only through the
    client library (and the hand-off wire, a leaf)."""
    front_ends = ("kernelfarm.mount", "kernelfarm.socks")
    assert offences("front-end", lambda src, dst: not within(src, front_ends)
                    or within(dst, front_ends + CLIENT + LEAVES) or dst == "kernelfarm") == []


def test_the_supervisor_imports_no_kernel_module() -> None:
    def allowed(src: str, dst: str) -> bool:
        if not within(src, ("kernelfarm.supervisor",)):
            return True
        return not within(dst, KERNEL + ("kernelfarm.client", "kernelfarm.aio",
                                         "kernelfarm.cli", "kernelfarm.bench")) \
            or within(dst, SECTIONS) or dst in ("kernelfarm.fs", "kernelfarm.net")

    assert offences("supervisor", allowed) == []


def test_the_rpc_server_imports_only_leaves() -> None:
    assert offences("server", lambda src, dst: not within(src, SERVER)
                    or within(dst, LEAVES) or dst == "kernelfarm") == []


def test_the_kernel_side_imports_no_client_supervisor_or_cli() -> None:
    def allowed(src: str, dst: str) -> bool:
        if not within(src, KERNEL + SERVER) or within(src, CLIENT):
            return True
        return not within(dst, CLIENT + ("kernelfarm.supervisor", "kernelfarm.cli",
                                         "kernelfarm.bench"))

    assert offences("kernel", allowed) == []


def test_nothing_below_the_cli_imports_it() -> None:
    top = ("kernelfarm.cli", "kernelfarm.__main__", "kernelfarm.bench")
    assert offences("cli", lambda src, dst: within(src, top) or not within(
        dst, ("kernelfarm.cli", "kernelfarm.bench"))) == []


def test_the_package_root_imports_nothing_eagerly() -> None:
    assert imports_of(MODULES["kernelfarm"], top_level_only=True) == set()


def test_config_lists_its_sections_without_loading_subsystems() -> None:
    assert GRAPH["kernelfarm.config"] <= set(LEAVES + SECTIONS) | {"kernelfarm"}


@pytest.mark.parametrize("entry, forbidden", [
    ("kernelfarm.kernel.process", ("kernelfarm.client", "kernelfarm.aio",
                                   "kernelfarm.supervisor", "kernelfarm.cli")),
    ("kernelfarm.supervisor.supervisor", ("kernelfarm.kernel", "kernelfarm.client",
                                          "kernelfarm.fs.subsystem", "kernelfarm.net.subsystem")),
    ("kernelfarm.socks.server", ("kernelfarm.kernel", "kernelfarm.supervisor",
                                 "kernelfarm.net.subsystem", "kernelfarm.net.relay")),
    ("kernelfarm.aio", ("kernelfarm.kernel", "kernelfarm.supervisor", "kernelfarm.config",
                        "kernelfarm.fs.subsystem", "kernelfarm.net.subsystem", "uvloop")),
])
def test_what_a_process_loads(entry: str, forbidden: tuple[str, ...]) -> None:
    """The same rules seen at run time: what importing each entry point really loads."""
    probe = (f"import sys, {entry}; import kernelfarm; kernelfarm.Client "
             f"if {entry!r} == 'kernelfarm.aio' else None; "
             "print('\\n'.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60).stdout.split()
    assert [m for m in loaded if within(m, forbidden)] == []

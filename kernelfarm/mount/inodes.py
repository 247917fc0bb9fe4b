"""The mount's inode numbers: the farm is path-based, FUSE speaks inode numbers.

Each name the kernel has looked up gets a node ``(parent, name)`` and a number that lasts
while the kernel remembers it (its lookup count); the path of a node is found by walking
up to the root, so a rename moves a whole subtree by changing one node.  Numbers are
never reused within a mount, so a stale number can never reach another file.  A node
whose name was removed (unlinked, or replaced by a rename) is *detached*: it keeps its
number until the kernel forgets it, but has no path any more.
"""

from __future__ import annotations

import errno
import itertools

ROOT_INO = 1  # pyfuse3.ROOT_INODE, the FUSE protocol's root node id


class Node:
    __slots__ = ("ino", "parent", "name", "lookups", "children")

    def __init__(self, ino: int, parent: int, name: str) -> None:
        self.ino = ino
        self.parent = parent      # 0 once detached
        self.name = name
        self.lookups = 0
        self.children = 0         # attached child nodes: a parent outlives its children


class Siblings:
    """The names of one directory's nodes, in the order this mount came to know them."""

    __slots__ = ("order", "at", "holes")

    def __init__(self) -> None:
        self.order: list[str | None] = []
        self.at: dict[str, int] = {}
        self.holes = 0

    def add(self, name: str) -> None:
        self.at[name] = len(self.order)
        self.order.append(name)

    def remove(self, name: str) -> None:
        self.order[self.at.pop(name)] = None
        self.holes += 1
        if self.holes > len(self.at) + 64:
            names = [kept for kept in self.order if kept is not None]
            self.order, self.holes = [], 0
            self.at.clear()
            for kept in names:
                self.add(kept)

    def after(self, name: str, count: int) -> list[str]:
        start = self.at.get(name)
        if start is None:
            return []
        following = (kept for kept in itertools.islice(self.order, start + 1, None)
                     if kept is not None)
        return list(itertools.islice(following, count))


class InodeTable:
    def __init__(self) -> None:
        root = Node(ROOT_INO, 0, "")
        root.lookups = 1          # the kernel never forgets the root
        self._nodes: dict[int, Node] = {ROOT_INO: root}
        self._by_name: dict[tuple[int, str], int] = {}
        self._siblings: dict[int, Siblings] = {}
        self._next = ROOT_INO + 1

    def __len__(self) -> int:
        return len(self._nodes)

    def path(self, ino: int) -> str:
        """The farm path of ``ino``; ``ENOENT`` for a detached or unknown node."""
        parts: list[str] = []
        while ino != ROOT_INO:
            node = self._nodes.get(ino)
            if node is None or not node.parent:
                raise FileNotFoundError(errno.ENOENT, "the file was removed")
            parts.append(node.name)
            ino = node.parent
        return "/" + "/".join(reversed(parts))

    def child_path(self, parent: int, name: str) -> str:
        base = self.path(parent)
        return f"/{name}" if base == "/" else f"{base}/{name}"

    def lookup(self, parent: int, name: str) -> int:
        """The number of ``parent/name`` (made if new), counting one kernel lookup."""
        ino = self._by_name.get((parent, name))
        if ino is None:
            ino = self._next
            self._next += 1
            self._nodes[ino] = Node(ino, parent, name)
            self._attach(parent, name, ino)
        self._nodes[ino].lookups += 1
        return ino

    def known(self, parent: int, name: str) -> int | None:
        return self._by_name.get((parent, name))

    def after(self, parent: int, name: str, count: int) -> list[tuple[str, int]]:
        """Up to ``count`` attached children of ``parent`` known after ``name``."""
        siblings = self._siblings.get(parent)
        if siblings is None:
            return []
        return [(child, self._by_name[(parent, child)])
                for child in siblings.after(name, count)]

    def _attach(self, parent: int, name: str, ino: int) -> None:
        self._by_name[(parent, name)] = ino
        self._nodes[parent].children += 1
        self._siblings.setdefault(parent, Siblings()).add(name)

    def _unname(self, parent: int, name: str) -> int | None:
        ino = self._by_name.pop((parent, name), None)
        if ino is not None:
            siblings = self._siblings[parent]
            siblings.remove(name)
            if not siblings.at:
                del self._siblings[parent]
        return ino

    def where(self, ino: int) -> tuple[int, str] | None:
        """``(parent, name)`` of an attached node, else ``None``."""
        node = self._nodes.get(ino)
        if node is None or not node.parent:
            return None
        return node.parent, node.name

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INO:
            return
        node.lookups -= count
        self._collect(node)

    def detach(self, parent: int, name: str) -> None:
        """``parent/name`` is gone from the farm; its node (if any) keeps only its number."""
        ino = self._unname(parent, name)
        if ino is None:
            return
        node = self._nodes[ino]
        node.parent = 0
        self._release_parent(parent)
        self._collect(node)

    def move(self, parent: int, name: str, new_parent: int, new_name: str) -> None:
        """A rename succeeded: the node follows, whatever was at the target is detached."""
        ino = self._by_name.get((parent, name))
        if (parent, name) == (new_parent, new_name):
            return
        self.detach(new_parent, new_name)
        if ino is None:
            return
        self._unname(parent, name)
        node = self._nodes[ino]
        node.parent, node.name = new_parent, new_name
        self._attach(new_parent, new_name, ino)
        self._release_parent(parent)

    def _release_parent(self, parent: int) -> None:
        node = self._nodes.get(parent)
        if node is not None:
            node.children -= 1
            self._collect(node)

    def _collect(self, node: Node) -> None:
        """Drop a node nobody refers to any more (neither the kernel nor a child)."""
        if node.lookups > 0 or node.children > 0 or node.ino == ROOT_INO:
            return
        del self._nodes[node.ino]
        if node.parent:
            self._unname(node.parent, node.name)
            self._release_parent(node.parent)

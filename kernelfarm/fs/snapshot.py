"""A volume's whole state in one file, so the journal can restart empty.

The file is a stream of journal-framed records (length, CRC-32, msgpack): a header, one
record per inode in pre-order (a directory before its entries), and an end record with
the inode count.  It is written to a temporary file, fsynced and renamed into place, so a
snapshot on disk is always whole; a missing end record or a bad checksum means damage and
the load fails loudly instead of serving a partial volume.

The header carries the *generation*: the first journal file to replay on top of this
snapshot.  Taking a snapshot switches writes to the next generation's empty journal
first, writes the tree as of that switch (in a forked child, see :mod:`.snapshotter`),
renames it into place, then deletes the older journals, so a crash at any step leaves a
snapshot and the journals that go with it (see :mod:`.volume`).

A big file (:data:`BY_REFERENCE` or more) is written from its own buffers -- the pieces a
stream was kept in (:mod:`.chunks`) -- framed without being joined, packed or copied:
the same bytes as before, where the snapshot child made three copies of every big file
in memory it had to fault in first.

Deep trees are walked with an explicit stack: a path can nest about 2000 directories,
beyond Python's recursion limit and msgpack's nesting limit.
"""

from __future__ import annotations

import os
from typing import Any, BinaryIO, Iterator

import msgpack

from kernelfarm import durable
from kernelfarm.fs import journal
from kernelfarm.fs.chunks import Chunks
from kernelfarm.fs.sparse import Sparse
from kernelfarm.fs.tree import ROOT_INO, Dir, File, Inode, Limits, Symlink, Tree
from kernelfarm.steps import STEP_BYTES, STEP_ITEMS, Steps, finish

FORMAT = 1
DIR, FILE, SYMLINK = 0, 1, 2
BY_REFERENCE = 64 * 1024
"""A file's content at least this big is framed from its own buffers (its msgpack is a
``bin 32`` then, as msgpack packs any ``bin`` of 64 KiB or more)."""


def _entries(tree: Tree) -> Iterator[tuple[Any, ...]]:
    """``(parent_ino, name, kind, ino, perm, mtime_ns, ctime_ns, payload)`` in pre-order
    (a big file's payload is its content as it is kept: :func:`_put`)."""
    root = tree.root
    payload: Any
    yield (0, "", DIR, root.ino, root.perm, root.mtime_ns, root.ctime_ns, None)
    stack: list[Dir] = [root]
    while stack:
        parent = stack.pop()
        for name, node in parent.entries.items():
            if isinstance(node, Dir):
                kind, payload = DIR, None
                stack.append(node)
            elif isinstance(node, File):
                data = node.data
                kind = FILE
                payload = ((data.size, list(data.extents())) if isinstance(data, Sparse)
                           else data if len(data) >= BY_REFERENCE else bytes(data))
            else:
                assert isinstance(node, Symlink)
                kind, payload = SYMLINK, node.target
            yield (parent.ino, name, kind, node.ino, node.perm, node.mtime_ns,
                   node.ctime_ns, payload)


def temp_path(path: str, generation: int) -> str:
    """Where the snapshot of ``generation`` is written before it is installed."""
    return f"{path}.tmp.{generation}"


def write(path: str, tree: Tree, generation: int) -> int:
    """Write ``tree`` durably to ``path`` (temp file, fsync, rename, fsync dir); its size."""
    tmp = temp_path(path, generation)
    size = write_temp(tmp, tree, generation)
    install(tmp, path)
    return size


def write_temp(tmp: str, tree: Tree, generation: int) -> int:
    """Write ``tree`` to the file ``tmp`` and fsync it; its size.  Removed on failure."""
    packer = msgpack.Packer(use_bin_type=True)
    count = 0
    try:
        # Private as the journals are: tenants' data, whatever the umask or the data dir's
        # mode (it was 0644 under the usual umask, beside 0600 journals).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as fh:
            _put(fh, packer, {"format": FORMAT, "volume": tree.name, "generation": generation,
                              "next_ino": tree.next_ino})
            for entry in _entries(tree):
                if entry[2] == FILE and type(entry[-1]) is not tuple \
                        and len(entry[-1]) >= BY_REFERENCE:
                    _put_file(fh, packer, entry)
                else:
                    _put(fh, packer, entry)
                count += 1
            _put(fh, packer, ("end", count))
            fh.flush()
            os.fsync(fh.fileno())
            return fh.tell()
    except BaseException:
        durable.discard(tmp)
        raise


def install(tmp: str, path: str) -> None:
    """Rename a written snapshot into place, durably (the directory is fsynced)."""
    os.replace(tmp, path)
    durable.sync_dir(os.path.dirname(path))


def _put(fh: BinaryIO, packer: msgpack.Packer, obj: Any) -> None:
    fh.write(journal.frame(packer.pack(obj)))


def _put_file(fh: BinaryIO, packer: msgpack.Packer, entry: tuple[Any, ...]) -> None:
    """Write a file's entry whose content (its last item: ``bytes``, a ``bytearray`` or
    :class:`.chunks.Chunks`) is :data:`BY_REFERENCE` or more from the content's own
    buffers: the bytes :func:`_put` would write, without its copies."""
    content = entry[-1]
    pieces = content.pieces if isinstance(content, Chunks) else [content]
    head = (bytes([0x90 | len(entry)]) + packer.pack(entry[:-1])[1:]  # a fixarray
            + b"\xc6" + len(content).to_bytes(4, "big"))
    fh.write(journal.frame_head([head, *pieces]))
    fh.write(head)
    for piece in pieces:
        fh.write(piece)


def load(path: str, limits: Limits) -> tuple[Tree, int]:
    """Rebuild the tree from a snapshot file; returns it and the journal generation."""
    return finish(loading(path, limits))


def loading(path: str, limits: Limits) -> Steps[tuple[Tree, int]]:
    """:func:`load` a step at a time (see :mod:`kernelfarm.steps`)."""
    tree, generation, damage = yield from _read(path, journal.read_all(path))
    if damage is not None:
        raise ValueError(damage)
    tree.limits = limits
    return tree, generation


def load_partial(path: str) -> tuple[Tree, int, str | None]:
    """As :func:`load`, but damage after the root ends the load early instead of failing
    it: the tree holds every inode read before, and the third value says what was wrong
    (``None`` when the snapshot is whole)."""
    return finish(_read(path, journal.read_all(path)))


def peek_name(path: str) -> str | None:
    """The volume named in a snapshot's header, if the header can be read."""
    try:
        header = next(journal.read_all(path), None)
    except (OSError, ValueError):
        return None
    name = header.get("volume") if isinstance(header, dict) else None
    return name if isinstance(name, str) else None


def _read(path: str, records: Iterator[Any]) -> Steps[tuple[Tree, int, str | None]]:
    header = next(records, None)
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ValueError(f"{path}: not a snapshot of format {FORMAT}: {header!r:.100}")
    tree: Tree | None = None
    dirs: dict[int, Dir] = {}
    count = 0
    try:
        for record in records:
            if record[0] == "end":
                if record[1] != count or tree is None:
                    raise ValueError(f"{path}: {count} inodes, end record says {record[1]}")
                if next(records, None) is not None:  # also runs read_all's damage check
                    raise ValueError(f"{path}: records after the end record")
                tree.next_ino = max(tree.next_ino, header["next_ino"])
                return tree, header["generation"], None
            node = _inode(record)
            count += 1
            parent_ino, name = record[0], record[1]
            if tree is None:
                if parent_ino != 0 or node.ino != ROOT_INO or not isinstance(node, Dir):
                    raise ValueError(f"{path}: the first inode is not the root")
                tree = Tree(header["volume"], node)
            else:
                parent = dirs.get(parent_ino)
                if parent is None:
                    raise ValueError(f"{path}: inode {node.ino} in unknown directory "
                                     f"{parent_ino}")
                _attach(tree, parent, name, node)
            if isinstance(node, Dir):
                dirs[node.ino] = node
            if count % STEP_ITEMS == 0 or (isinstance(node, File)
                                            and len(node.data) >= STEP_BYTES):
                yield
        raise ValueError(f"{path}: no end record (truncated snapshot)")
    except (ValueError, TypeError, IndexError) as exc:
        if tree is None:
            raise ValueError(f"{path}: {exc}") from None
        tree.next_ino = max(tree.next_ino, header["next_ino"])
        return tree, header["generation"], str(exc)


def _inode(record: tuple[Any, ...]) -> Inode:
    _parent, _name, kind, ino, perm, mtime_ns, ctime_ns, payload = record
    node: Inode
    if kind == DIR:
        node = Dir(ino, perm, 0)
    elif kind == FILE:
        # bytes, or a sparse file's [size, [[offset, bytes], ...]]
        node = File(ino, perm, 0, payload if isinstance(payload, bytes)
                    else Sparse.from_extents(payload[0], [tuple(e) for e in payload[1]]))
    elif kind == SYMLINK:
        node = Symlink(ino, 0, payload)
    else:
        raise ValueError(f"unknown inode kind {kind!r}")
    node.mtime_ns, node.ctime_ns = mtime_ns, ctime_ns
    return node


def _attach(tree: Tree, parent: Dir, name: str, node: Inode) -> None:
    parent.entries[name] = node
    tree.inodes += 1
    tree.next_ino = max(tree.next_ino, node.ino + 1)
    if isinstance(node, Dir):
        parent.subdirs += 1
    elif isinstance(node, File):
        tree.files += 1
        tree.bytes_used += len(node.data)
    else:
        assert isinstance(node, Symlink)
        tree.bytes_used += node.size

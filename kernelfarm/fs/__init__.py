"""The fs subsystem: durable, POSIX-like file systems, one per volume, served by the kernels.

A volume is the first component of a path (``/alice/src/a.c`` lives in volume ``alice``) and
the partition key: a volume lives whole in the kernel that owns its hash slot.  The parts:
:mod:`.paths` (parsing and refusing hostile paths), :mod:`.tree` (the in-memory namespace),
:mod:`.journal` and :mod:`.snapshot` (durability), :mod:`.volume` (tree + journal),
:mod:`.store` (the on-disk layout) and :mod:`.subsystem` (the RPC methods).  The
``client.fs`` API is client code: :mod:`kernelfarm.client`.

Durability against power loss
-----------------------------
A power cut keeps only what was fsynced: a file's bytes after an fsync of the file, a
name (created, renamed, unlinked) after an fsync of its directory.  Every write under
``<data_dir>/fs`` follows these orders (the idioms live in :mod:`kernelfarm.durable`):

Volume create (:meth:`.volume.Volume.create`)
  1. ``makedirs`` of the slot directory, fsyncing each parent it adds to (``data_dir``,
     ``data_dir/fs``): a volume renamed into a directory that vanishes is lost.
  2. ``.tmp-<dir>/VOLUME`` and ``journal.0`` written and fsynced (the name file through
     ``os.write``, never a buffered ``open()`` whose bytes are still in user space when
     it is fsynced: that lost every volume of issue 9).
  3. ``snapshot`` written to ``snapshot.tmp``, fsynced, renamed, and ``.tmp-<dir>``
     fsynced: the three names inside are now durable.
  4. ``.tmp-<dir>`` renamed to ``<dir>``, the slot directory fsynced: only now is the
     create acknowledged.  A cut before this leaves ``.tmp-*``, cleared at load.

Journal append (:meth:`.journal.Journal.flush`)
  one ``write`` of the turn's records, then ``fdatasync`` (``always``: before any reply of
  the turn; ``batch``: within ``batch_interval_ms``; ``never``: not at all).  fdatasync
  also makes the file's new size durable, so appends need no directory fsync.

Snapshot (:meth:`.volume.Volume.snapshot`)
  1. ``journal.G+1`` created empty, fsynced, and the volume directory fsynced: the
     snapshot that names generation G+1 must never be durable without its journal.
  2. ``snapshot.tmp`` written and fsynced, renamed over ``snapshot``, directory fsynced:
     the rename installs a whole snapshot or none.
  3. ``journal.G`` unlinked (no fsync needed: load deletes journals of other generations).

Volume destroy (:meth:`.volume.Volume.destroy`)
  ``<dir>`` renamed to ``.del-<dir>``, the slot directory fsynced (the destroy is then
  acknowledged), then the tree deleted; a leftover ``.del-*`` is cleared at load.

Recovery truncates a torn journal tail and fsyncs the file before appending after it.
The supervisor's ``migration.json`` is written with :func:`kernelfarm.durable.write_file`
and removed with :func:`kernelfarm.durable.remove`.
"""

"""The fs subsystem: durable, POSIX-like file systems, one per volume, served by the kernels.

A volume is the first component of a path (``/alice/src/a.c`` lives in volume ``alice``) and
the partition key: a volume lives whole in the kernel that owns its hash slot.  The parts:
:mod:`.paths` (parsing and refusing hostile paths), :mod:`.tree` (the in-memory namespace),
:mod:`.sparse` (file content with holes), :mod:`.chunks` (file content as streamed),
:mod:`.journal`, :mod:`.snapshot`, :mod:`.snapshotter` and :mod:`.snapshot_schedule`
(durability), :mod:`.volume` (tree + journal), :mod:`.loading` (a volume loaded whatever its
damage), :mod:`.store` (the on-disk layout), :mod:`.space` (free space kept for the
journals), :mod:`.params` (the checks of the methods' values) and :mod:`.subsystem` (the
RPC methods).  The ``client.fs`` API is client code: :mod:`kernelfarm.client`.

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
  3. ``snapshot`` written to ``snapshot.tmp.0``, fsynced, renamed, and ``.tmp-<dir>``
     fsynced: the three names inside are now durable.
  4. ``.tmp-<dir>`` renamed to ``<dir>``, the slot directory fsynced: only now is the
     create acknowledged.  A cut before this leaves ``.tmp-*``, cleared at load.

Journal append (:meth:`.journal.Journal.flush`)
  one ``pwritev`` of the turn's records at the end of the log, then ``fdatasync``
  (``always``: before any reply of the turn; ``batch``: within ``batch_interval_ms``;
  ``never``: not at all).  fdatasync also makes a new file size durable, so appends need
  no directory fsync; under ``always`` the log is zero-filled ahead (in the same
  fdatasync as the records that grew the file), so most turns write into bytes the file
  already has.  A new journal's header (its nonce, which seeds its records' CRCs) is
  fsynced at creation under ``always`` and ``batch``.

Snapshot (:mod:`.snapshotter`, :meth:`.volume.Volume.begin_snapshot`)
  1. ``always``/``batch``: ``journal.G`` fdatasynced (recovery replays it before the
     next one, so it must be whole before a change in G+1 is durable); ``journal.G+1``
     created empty and fsynced, the volume directory fsynced.  ``never``: ``journal.G+1``
     only created (no fsync on the loop: nothing is promised at a power cut).  Later
     writes go to ``journal.G+1``.
  2. A forked child fdatasyncs ``journal.G`` (a no-op unless ``never``), writes the tree
     as of step 1 to ``snapshot.tmp.G+1`` and fsyncs it; the loop goes on serving.
  3. When the child has exited 0, the kernel renames it over ``snapshot`` and fsyncs the
     directory: the rename installs a whole snapshot or none (and makes the name
     ``journal.G+1`` durable, under ``never`` too).
  4. Journals older than G+1 deleted, a slice of the loop at a time (no fsync needed:
     load deletes journals older than the snapshot's generation, and replays G, G+1, ...
     in order if they are not).

Volume destroy (:meth:`.volume.Volume.destroy`)
  ``<dir>`` renamed to ``.del-<dir>``, the slot directory fsynced (the destroy is then
  acknowledged), then the tree deleted; a leftover ``.del-*`` is cleared at load.

Recovery truncates a torn journal tail and fsyncs the file before appending after it.
A volume that cannot be recovered whole is served read-only from what can be read (or,
if nothing can, refuses every call with EIO naming the damage), and is listed under
``fs.damaged`` in ``kernel.stats`` and by ``kernelfarm status``: one bad file never hides
a volume, nor stops the kernel's other volumes.
The supervisor's ``migration.json`` is written with :func:`kernelfarm.durable.write_file`
(whole or absent after a cut); its removal is not fsynced, since a record a cut brings
back only reports a finished batch as interrupted.
"""

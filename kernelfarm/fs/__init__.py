"""The fs subsystem: durable, POSIX-like file systems, one per volume, served by the kernels.

A volume is the first component of a path (``/alice/src/a.c`` lives in volume ``alice``) and
the partition key: a volume lives whole in the kernel that owns its hash slot.  The parts:
:mod:`.paths` (parsing and refusing hostile paths), :mod:`.tree` (the in-memory namespace),
:mod:`.journal` and :mod:`.snapshot` (durability), :mod:`.volume` (tree + journal),
:mod:`.store` (the on-disk layout) and :mod:`.subsystem` (the RPC methods).  The
``client.fs`` API is client code: :mod:`kernelfarm.client`.
"""

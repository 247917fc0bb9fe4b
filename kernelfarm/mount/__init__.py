"""``kernelfarm mount``: the farm's file systems for unmodified programs, through FUSE.

A front-end and a client of the farm: it uses :class:`kernelfarm.aio.Client` like any
program and never imports server code.  :mod:`.operations` maps FUSE onto the ``fs.*``
methods, :mod:`.inodes` numbers the paths the kernel knows, :mod:`.writeback` keeps
writes in flight, :mod:`.runner` mounts and daemonizes.  Needs the ``mount`` extra
(pyfuse3, which builds against libfuse 3).
"""

"""``kernelfarm socks``: the farm's net namespaces for unmodified programs, over SOCKS5.

A front-end and a client of the farm, like any program: ``protocol`` is RFC 1928/1929
without I/O, ``kernels`` finds a namespace's kernel and talks to its hand-off socket, and
``server`` runs the handshake and hands each connection to that kernel, which relays it
(:mod:`kernelfarm.net.relay`).  Nothing here imports kernel or supervisor code.
"""

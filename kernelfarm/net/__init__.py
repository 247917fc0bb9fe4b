"""net: TCP and UDP sockets on the host network, held by namespaces.

As rumpnet gives a rump kernel sockets, this subsystem gives each kernel the sockets of
the namespaces whose names hash to its slots.  ``config`` declares the ``[net]`` section,
``policy`` decides what may be reached, ``sockets`` drives one host socket from the event
loop, ``namespace`` holds a tenant's sockets and counters, ``subsystem`` serves ``net.*``,
``relay`` copies the bytes of a handed-over connection both ways and ``handoff_service``
takes such connections from ``kernelfarm socks`` (``handoff_peer``: one connection to
it, ``handoff_fields``: a request's fields, ``handoff_budget``: failed token checks per
peer); ``handoff_moves`` moves sockets and relays with their namespace during live scaling.
The ``client.net`` API is client code: :mod:`kernelfarm.client`.
"""

"""Tenants: who is calling (``auth.hello``), and which volumes and namespaces it may use.

:mod:`.tokens` is a leaf the clients use too (finding and hashing a token); :mod:`.table`
is the tenant table as plain data; :mod:`.store` keeps it on disk (supervisor only);
:mod:`.gate` is what every server (the control port, each kernel) checks connections with.
"""

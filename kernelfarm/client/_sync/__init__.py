"""The blocking client, generated from :mod:`kernelfarm.client._async` by
:mod:`kernelfarm.client.unasync` (``tests/client/test_unasync.py`` fails on drift).
Only ``io.py`` is written by hand."""

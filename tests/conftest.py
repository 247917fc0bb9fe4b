"""Suite-wide test setup: uvloop for async tests, the loop kernels run on; hypothesis
settings that do not depend on how busy the machine is."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
import uvloop
from hypothesis import HealthCheck, settings

import rawpeer

# The suite runs on shared 2-core machines: a property test must fail on a counterexample,
# never because drawing its examples was slow (too_slow) or one example ran long (deadline).
settings.register_profile("kernelfarm", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("kernelfarm")


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> dict[str, Callable[[], Any]]:
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
def close_raw_peers() -> Iterator[None]:
    """Close the raw peers a test left open (it failed before it closed them)."""
    yield
    while rawpeer.opened:
        rawpeer.opened.pop().close()

"""Suite-wide test setup: uvloop for async tests, the loop kernels run on."""

from __future__ import annotations

from typing import Any, Callable

import pytest
import uvloop


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> dict[str, Callable[[], Any]]:
    return {"uvloop": uvloop.new_event_loop}

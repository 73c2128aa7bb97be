"""Fixtures shared by the test modules."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from twisted.logger import globalLogPublisher


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted while the test runs."""
    seen: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)

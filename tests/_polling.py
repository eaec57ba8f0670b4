"""Waiting on the delivery thread, whose counters have no event to wait on."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

import revenium_ollama_transport as metering


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls ``condition`` until it holds; fails with ``what`` and the counters at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout}s: {what}; stats={metering.stats()}")
        time.sleep(0.01)

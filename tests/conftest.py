"""Shared fixtures: the Ollama simulator, the fake metering API, and metering pointed at it."""

from __future__ import annotations

import os

# Before the package is imported (it looks at the spool then): tests that want a spool name
# one, in a temporary directory; none reads or writes the user's own.
os.environ["REVENIUM_SPOOL_DIR"] = "off"
os.environ["REVENIUM_LEDGER"] = "off"

from collections.abc import Iterator

import pytest

import revenium_ollama_transport as metering
from revenium_ollama_transport._stats import counters
from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator

API_KEY = "hak_test_0123456789"


@pytest.fixture
def sim() -> Iterator[OllamaSimulator]:
    with OllamaSimulator() as simulator:
        yield simulator


@pytest.fixture
def api() -> Iterator[FakeMeteringAPI]:
    with FakeMeteringAPI(expected_api_key=API_KEY) as fake:
        yield fake


@pytest.fixture
def metered(api: FakeMeteringAPI) -> Iterator[FakeMeteringAPI]:
    """Records of this test go to ``api``; counters start at zero."""
    assert metering.flush(10.0)
    counters.reset()
    metering.configure(api_key=API_KEY, base_url=api.url, max_retry_wait=0.05)
    yield api
    metering.flush(10.0)
    metering.configure(reset=True)

"""Meter every Ollama call at the HTTP transport and report it to Revenium.

Importing the package meters ``ollama`` as it is (``install``; set
``REVENIUM_METERING_ENABLED=false`` to switch that off). ``ReveniumTransport`` /
``AsyncReveniumTransport`` go into any httpx client pointed at Ollama; ``usage_metadata``
attributes calls to customers, products and agents.
"""

from __future__ import annotations

import logging as _logging
from typing import Any

from . import _config, _log
from ._config import DeliveryError
from ._install import install, instrument, uninstall
from ._metadata import MetadataError, usage_metadata
from ._openai_client import async_openai_client, openai_client
from ._sink import delivery as _load_delivery
from ._sink import loaded_delivery as _loaded_delivery
from ._stats import counters as _counters
from ._transport import AsyncReveniumTransport, ReveniumTransport
from ._version import __version__

__all__ = [
    "AsyncReveniumTransport",
    "DeliveryError",
    "MetadataError",
    "ReveniumTransport",
    "__version__",
    "async_openai_client",
    "configure",
    "flush",
    "install",
    "instrument",
    "openai_client",
    "shutdown",
    "stats",
    "uninstall",
    "usage_metadata",
]

_log.configure_from_environment()
try:
    install()
except ImportError:  # no usable ollama: the transports still work on their own
    _logging.getLogger(__name__).debug("ollama not importable; nothing installed", exc_info=True)


def configure(*, reset: bool = False, **settings: Any) -> None:
    """Overrides settings read from the environment, e.g. ``configure(api_key="hak_...",
    base_url="https://api.revenium.ai")``. Names: ``api_key``, ``base_url``,
    ``queue_size``, ``max_in_flight``, ``request_timeout``, ``max_attempts``,
    ``max_retry_wait``, ``shutdown_timeout``, ``on_delivery_error`` (called with a
    ``DeliveryError`` for each record not delivered). ``reset=True`` first drops every
    earlier override, so that the environment rules again (between tests, say)."""
    if reset:
        _config.clear_overrides()
    if settings:
        _config.set_overrides(**settings)
    dispatcher = _loaded_delivery()
    if dispatcher is not None:  # else the dispatcher, when made, reads the settings afresh
        dispatcher.settings_changed()


def flush(timeout: float | None = 10.0) -> bool:
    """Blocks until every record so far is delivered, refused, dropped, or waiting in the
    spool (during an outage: its replay delivers it later); False on timeout."""
    return _load_delivery().flush(timeout)


def shutdown(timeout: float | None = 5.0) -> bool:
    """Delivers what it can within ``timeout`` and stops the delivery thread. Also runs at
    interpreter exit. Metering starts again by itself on the next call."""
    return _load_delivery().shutdown(timeout)


def stats() -> dict[str, float]:
    """Counters: ``recorded``, ``delivered``, ``retried``, ``spooled``, ``replayed``,
    ``ledger_written``, ``dropped.<reason>``, ``failed.<status>``, ``internal_errors``;
    ``queued`` (waiting right now); and
    ``oldest_undelivered_seconds``, how long the oldest record not yet delivered has
    waited, in memory or in the spool."""
    snapshot: dict[str, float] = dict(_counters.snapshot())
    dispatcher = _load_delivery()
    snapshot["queued"] = dispatcher.queued()
    snapshot["oldest_undelivered_seconds"] = round(dispatcher.oldest_age(), 3)
    return snapshot

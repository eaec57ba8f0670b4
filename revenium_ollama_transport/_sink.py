"""Where ended observations go unless a transport is given its own sink.

The transports only look the sink up, so they never import the delivery layer. That layer
(the dispatcher, its asyncio loop, HTTP client and spool) is loaded by the first record
the default sink is given, or by whatever else needs it first (``delivery()``): importing
the package does not load it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from ._observation import CallObservation, Sink

# The kill switch, read once at import: REVENIUM_METERING_ENABLED=false meters nothing.
metering_enabled = os.environ.get("REVENIUM_METERING_ENABLED", "").strip().lower() not in (
    "false",
    "0",
    "no",
    "off",
)


if TYPE_CHECKING:
    from ._delivery import Dispatcher

_DELIVERY = __name__.rpartition(".")[0] + "._delivery"


def delivery() -> Dispatcher:
    """The process's dispatcher, the delivery layer loaded now if it was not yet."""
    from ._delivery import dispatcher  # noqa: PLC0415 - on first use only

    return dispatcher


def loaded_delivery() -> Dispatcher | None:
    """The dispatcher if the delivery layer is loaded (fully), else None: never loads it."""
    module = sys.modules.get(_DELIVERY)
    return getattr(module, "dispatcher", None)


def _first_record(observation: CallObservation) -> None:
    """The default sink until the first record: loads delivery, then hands over to it."""
    dispatcher = delivery()
    if _default[0] is _first_record:  # unless someone set another sink meanwhile
        _default[0] = dispatcher.submit
    dispatcher.submit(observation)


_default: list[Sink] = [_first_record]


def set_default_sink(sink: Sink) -> None:
    _default[0] = sink


def submit_default(observation: CallObservation) -> None:
    _default[0](observation)

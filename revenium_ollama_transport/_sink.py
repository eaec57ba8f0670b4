"""Where ended observations go unless a transport is given its own sink.

Delivery registers itself here when the package is imported; the transports only look
the sink up, so they never import the delivery layer.
"""

from __future__ import annotations

import os

from ._observation import CallObservation, Sink
from ._stats import counters

# The kill switch, read once at import: REVENIUM_METERING_ENABLED=false meters nothing.
metering_enabled = os.environ.get("REVENIUM_METERING_ENABLED", "").strip().lower() not in (
    "false",
    "0",
    "no",
    "off",
)


def _no_sink(observation: CallObservation) -> None:
    counters.add("dropped.no_sink")


_default: list[Sink] = [_no_sink]


def set_default_sink(sink: Sink) -> None:
    _default[0] = sink


def submit_default(observation: CallObservation) -> None:
    _default[0](observation)

"""A sink that keeps observations in memory and builds their records on demand."""

from __future__ import annotations

import threading
from typing import Any

from revenium_ollama_transport._metadata import resolve
from revenium_ollama_transport._observation import CallObservation
from revenium_ollama_transport._record import MeteringRecord, build_record

# Fields that differ from call to call whatever the bytes were.
VOLATILE = (
    "transactionId",
    "requestTime",
    "responseTime",
    "completionStartTime",
    "requestDuration",
    "timeToFirstToken",
)


class RecordingSink:
    def __init__(self) -> None:
        self.observations: list[CallObservation] = []
        self._changed = threading.Condition()

    def __call__(self, observation: CallObservation) -> None:
        with self._changed:
            self.observations.append(observation)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.observations) >= count, timeout):
                raise TimeoutError(f"{len(self.observations)} observations, expected {count}")

    def records(self) -> list[MeteringRecord]:
        return [build_record(o, resolve(o.layers)) for o in self.observations]

    def stable_wires(self) -> list[dict[str, Any]]:
        """Each record's wire fields without those that vary between identical calls."""
        return [{k: v for k, v in r.wire.items() if k not in VOLATILE} for r in self.records()]

"""Process-wide counters, so that nothing the library drops or fails at goes unseen."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

logger = logging.getLogger("revenium_ollama_transport")


class Counters:
    __slots__ = ("_lock", "_values")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: defaultdict[str, int] = defaultdict(int)

    def add(self, name: str, amount: int = 1) -> None:
        # acquire() and release(), not "with": twice a record, and "with" makes two bound
        # methods each time.
        lock = self._lock
        lock.acquire()
        try:
            self._values[name] += amount
        finally:
            lock.release()

    def get(self, name: str) -> int:
        with self._lock:
            return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def reset(self) -> None:
        with self._lock:
            self._values.clear()


counters = Counters()


def internal_failure(where: str) -> None:
    """A bug or surprise inside the library: costs a record at most, never a response.

    Call from an ``except`` block; the traceback goes to the debug log.
    """
    counters.add("internal_errors")
    counters.add(f"internal_errors.{where}")
    logger.debug("internal failure in %s; the call itself is unaffected", where, exc_info=True)

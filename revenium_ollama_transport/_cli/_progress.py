"""A progress bar on stderr without a dependency: one redrawn line on a terminal, else a
line each tenth of the way (logs and pipes get a few lines, not a flood)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

_WIDTH = 30
_REDRAW_EVERY_S = 0.1


class Progress:
    def __init__(
        self,
        label: str,
        total: int,
        stream: TextIO,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._label = label
        self._total = total
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._step = max(1, -(-total // 10))  # a line per ~10% when not a terminal
        self._shown = 0
        self._drawn_at = float("-inf")  # never drawn

    def update(self, done: int) -> None:
        if self._total <= 0:
            return
        if self._tty:
            now = self._clock()
            if done < self._total and now - self._drawn_at < _REDRAW_EVERY_S:
                return
            self._drawn_at = now
            filled = _WIDTH * done // self._total
            bar = "#" * filled + " " * (_WIDTH - filled)
            self._stream.write(f"\r{self._label} [{bar}] {done}/{self._total}")
        elif done // self._step > self._shown // self._step or (
            done == self._total and self._shown != done
        ):
            percent = 100 * done // self._total
            self._stream.write(f"{self._label}: {done}/{self._total} ({percent}%)\n")
        else:
            return
        self._shown = done
        self._stream.flush()

    def close(self) -> None:
        """Ends the terminal's bar line."""
        if self._tty and self._shown:
            self._stream.write("\n")
            self._stream.flush()

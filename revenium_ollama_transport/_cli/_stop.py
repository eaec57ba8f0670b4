"""SIGINT and SIGTERM as a clean end of a long-running command (``tail``, ``simulate``)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType
from typing import Any


class _Interrupted(BaseException):
    """Raised by the handlers inside ``until_signalled``, caught when it ends."""


_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))


@contextlib.contextmanager
def until_signalled() -> Iterator[None]:
    """Runs the block until SIGINT or SIGTERM, which end it quietly (the block's own
    ``with`` statements clean up: a second signal meanwhile is ignored)."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        for other in previous:
            signal.signal(other, signal.SIG_IGN)
        raise _Interrupted

    for signum in _SIGNALS:
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    except _Interrupted:
        pass
    finally:
        for signum, handler_before in previous.items():
            if handler_before is not None:  # None: a handler set from C, not restorable
                signal.signal(signum, handler_before)

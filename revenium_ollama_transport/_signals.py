"""SIGTERM and SIGINT: deliver what can be delivered first, then do what the signal would
have done without us.

A default SIGTERM ends a process without running atexit handlers, so queued records would
be lost (as with a container stop or `kill`). The handler delivers within the shutdown
deadline, then hands the signal on: to the handler the application had installed, or to
the default action (re-raised with the default disposition, so the exit status is the
signal's).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger("revenium_ollama_transport")

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT") if hasattr(signal, name))
_installed: dict[int, Any] = {}  # signal -> the handler that was there before ours


def _on_signal(
    deliver: Callable[[], object], previous: Any, signum: int, frame: FrameType | None
) -> None:
    try:
        deliver()
    except Exception:
        logger.debug("delivery on signal %d failed", signum, exc_info=True)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    # SIG_IGN: the application asked for the signal to be ignored.


def install(deliver: Callable[[], object]) -> None:
    """Puts the handlers in place; only the main thread can, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in _SIGNALS:
        if signum in _installed:
            continue
        previous = signal.getsignal(signum)
        if previous is None:  # a handler installed from C: not ours to wrap
            continue
        signal.signal(signum, functools.partial(_on_signal, deliver, previous))
        _installed[signum] = previous


def uninstall() -> None:
    """Puts back the handlers that were there before ours (still ours ones only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_installed.items()):
        current = signal.getsignal(signum)
        if isinstance(current, functools.partial) and current.func is _on_signal:
            signal.signal(signum, previous)
        del _installed[signum]

"""A one-shot kernel timer that a caller's thread arms and the delivery thread's loop reads.

The first record of a burst used to wake the delivery thread twice: at once, only to start
its linger, and again when the linger was over. Each wake-up takes the interpreter lock
(from a busy caller, at the switch interval) and runs the event loop through cold code:
about as much of the delivery thread's CPU as the HTTP exchange of a lone record. Armed by
the caller instead, a ``timerfd`` wakes the thread once, when the linger is over.

Linux only (``timerfd_create``, through ``ctypes``); elsewhere, or if anything about it
fails, ``LingerTimer.create()`` returns None and the delivery thread is woken at once, as
before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import Any

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC if hasattr(os, "O_CLOEXEC") else 0


class _TimeSpec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("it_interval", _TimeSpec), ("it_value", _TimeSpec)]


class LingerTimer:
    """A timer file descriptor that becomes readable ``seconds`` after each ``arm()``."""

    __slots__ = ("_arguments", "_settime", "_spec", "fd")

    def __init__(self, fd: int, settime: Any, seconds: float) -> None:
        self.fd = fd
        self._settime = settime
        whole, fraction = divmod(seconds, 1.0)
        self._spec = _ITimerSpec(_TimeSpec(0, 0), _TimeSpec(int(whole), int(fraction * 1e9)))
        # Made once: a call then converts nothing (it runs on the caller's path).
        self._arguments = (fd, 0, ctypes.byref(self._spec), None)

    @classmethod
    def create(cls, seconds: float) -> LingerTimer | None:
        if not sys.platform.startswith("linux"):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            create, settime = libc.timerfd_create, libc.timerfd_settime
        except (OSError, AttributeError):
            return None
        create.restype = settime.restype = ctypes.c_int
        fd = create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            return None
        # A zero expiry disarms: tried once, so that a timer the kernel refuses is never
        # relied on.
        if settime(fd, 0, ctypes.byref(_ITimerSpec()), None) != 0:
            with contextlib.suppress(OSError):
                os.close(fd)
            return None
        return cls(fd, settime, seconds)

    def arm(self) -> None:
        """Starts (or restarts) the countdown; from any thread, without waking the reader."""
        self._settime(*self._arguments)

    def clear(self) -> None:
        """Takes the expiry that made the descriptor readable (for the loop's reader)."""
        with contextlib.suppress(OSError):  # BlockingIOError: none was counted
            os.read(self.fd, 8)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

"""The kernel timer that ends the delivery thread's linger (Linux: timerfd)."""

from __future__ import annotations

import select
import sys
import time

import pytest

from revenium_ollama_transport._linger_timer import LingerTimer

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")


@linux_only
def test_armed_it_becomes_readable_after_its_time_and_clear_takes_that_back() -> None:
    timer = LingerTimer.create(0.05)
    assert timer is not None
    try:
        poller = select.poll()
        poller.register(timer.fd, select.POLLIN)
        assert poller.poll(0) == []  # made disarmed
        armed = time.monotonic()
        timer.arm()
        assert poller.poll(5000) == [(timer.fd, select.POLLIN)]
        assert time.monotonic() - armed >= 0.04
        timer.clear()
        assert poller.poll(0) == []
        timer.arm()  # once more: it is one-shot, and re-armed by each arm()
        assert poller.poll(5000) == [(timer.fd, select.POLLIN)]
    finally:
        timer.close()


@pytest.mark.skipif(sys.platform.startswith("linux"), reason="elsewhere than Linux")
def test_elsewhere_there_is_no_timer_and_the_thread_is_woken_at_once() -> None:
    assert LingerTimer.create(0.02) is None

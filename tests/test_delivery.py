"""Delivery to the fake metering API over loopback: retries, back-off, permanent failures,
logging, flush/shutdown, overflow, secrets, interpreter exit, threads and fork.

Records come from real calls of the real ``ollama`` client through ``ReveniumTransport``
against the Ollama simulator; nothing waits with a bare sleep: every wait is on a condition
with a deadline.
"""

from __future__ import annotations

import contextvars
import email.utils
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import ollama
import pytest

import revenium_ollama_transport as metering
from revenium_ollama_transport import ReveniumTransport, _config, usage_metadata
from revenium_ollama_transport._delivery import dispatcher, parse_retry_after
from revenium_ollama_transport._linger_timer import LingerTimer
from revenium_ollama_transport.testing import FakeMeteringAPI, OllamaSimulator, ReceivedMetering

from ._polling import wait_until
from ._processes import run_python
from .conftest import API_KEY

LOGGER = "revenium_ollama_transport"
MODEL = "qwen2.5:0.5b"
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]
ANSWER = "The sky is blue."  # the simulator's default reply
KEY_VARIABLE = "REVENIUM_METERING_API_KEY"
CREDENTIAL = "sk-secret-credential"


# --- helpers -----------------------------------------------------------------------------


def client(sim: OllamaSimulator) -> ollama.Client:
    return ollama.Client(host=sim.url, transport=ReveniumTransport())


def chat(c: ollama.Client, model: str = MODEL) -> None:
    """One non-streamed chat call; checks the caller got the simulator's answer."""
    assert c.chat(model=model, messages=MESSAGES).message.content == ANSWER


def stat(name: str) -> int:
    return int(metering.stats().get(name, 0))


def linger_of(c: ollama.Client, calls: int = 1) -> float:
    """Seconds from a burst of ``calls`` chats to the first of their records being built:
    the delivery thread's linger (records are built only after it)."""
    built: list[float] = []

    def listener(record: object) -> None:
        built.append(time.perf_counter())

    dispatcher.add_listener(listener)
    try:
        called = time.perf_counter()
        for _ in range(calls):
            chat(c)
        wait_until(lambda: len(built) == calls, 10.0, "the records built")
    finally:
        dispatcher.remove_listener(listener)
    return min(built) - called


def wait_records(api: FakeMeteringAPI, n: int, timeout: float) -> list[dict[str, Any]]:
    """``api.wait_for_records``, failing with the library's counters as well."""
    try:
        return api.wait_for_records(n, timeout=timeout)
    except TimeoutError as exc:
        pytest.fail(f"{exc}; stats={metering.stats()}")


def wait_received(api: FakeMeteringAPI, n: int, timeout: float) -> list[ReceivedMetering]:
    try:
        return api.wait_for_received(n, timeout=timeout)
    except TimeoutError as exc:
        pytest.fail(f"{exc}; stats={metering.stats()}")


def our_logs(
    caplog: pytest.LogCaptureFixture, level: int = logging.WARNING
) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= level]


def statuses(api: FakeMeteringAPI) -> list[int | None]:
    return [r.status for r in api.received]


@pytest.fixture
def fresh_warnings() -> Iterator[None]:
    """The dispatcher warns once per process about a key, a URL or a full queue; a test that
    counts those warnings starts from a dispatcher that has not warned yet."""
    dispatcher._warned.clear()
    dispatcher._last_overflow_warning = float("-inf")
    yield
    dispatcher._warned.clear()


@pytest.fixture
def isolated(metered: FakeMeteringAPI) -> Iterator[FakeMeteringAPI]:
    """``metered`` for a test that makes the API hang or changes settings the delivery thread
    takes when it starts (``max_in_flight``, ``request_timeout``): afterwards the API answers
    again, the overrides are cleared and the thread is stopped, so that the next call starts
    it afresh with the defaults and no request or delivery slot stays held."""
    yield metered
    metered.set_mode("normal")
    metering.flush(10.0)
    _config.clear_overrides()
    dispatcher.settings_changed()
    metering.shutdown(10.0)


# --- parse_retry_after (unit) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", 1.0),
        (" 2 ", 2.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("-5", 0.0),
        ("", None),
        (None, None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("Wed, 99 Foo 2024 25:61:00 GMT", None),
    ],
)
def test_parse_retry_after_values(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date_in_the_future() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert header.endswith("GMT")
    seconds = parse_retry_after(header, now=now)
    assert seconds is not None
    assert 29.0 <= seconds <= 31.0


def test_parse_retry_after_http_date_against_the_clock() -> None:
    header = email.utils.formatdate(time.time() + 120, usegmt=True)
    seconds = parse_retry_after(header)
    assert seconds is not None
    assert 100.0 <= seconds <= 121.0


def test_parse_retry_after_http_date_in_the_past_is_zero() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now - 3600, usegmt=True), now=now) == 0.0


# --- transient failures, then success ----------------------------------------------------


@pytest.mark.parametrize("status", [503, 500, 502, 408])
def test_transient_status_then_success_stores_once(
    sim: OllamaSimulator, metered: FakeMeteringAPI, status: int
) -> None:
    metered.respond_with(status, times=2)
    chat(client(sim))
    assert metering.flush(10.0)
    [record] = metered.records
    received = metered.received
    assert [r.status for r in received] == [status, status, 201]
    transaction = record["transactionId"]
    assert {r.headers.get("idempotency-key") for r in received} == {transaction}
    assert len({r.body for r in received}) == 1
    assert all(r.headers["x-api-key"] == API_KEY for r in received)
    stats = metering.stats()
    assert stats.get("retried", 0) == 2  # one per attempt after the first
    assert stats.get("delivered", 0) == 1
    assert stats.get("recorded", 0) == 1
    assert not [k for k in stats if k.startswith(("dropped.", "failed."))], stats


def test_429_retry_after_is_honoured(sim: OllamaSimulator, metered: FakeMeteringAPI) -> None:
    metering.configure(max_retry_wait=5.0)
    metered.respond_with(429, retry_after=1)
    chat(client(sim))
    wait_records(metered, 1, 10.0)
    first, second = metered.received
    assert (first.status, second.status) == (429, 201)
    gap = second.time - first.time
    assert gap >= 0.8, f"retried {gap:.3f}s after a 429 with Retry-After: 1"
    assert gap < 4.0, f"retried only {gap:.3f}s after a 429 with Retry-After: 1"
    assert first.headers["idempotency-key"] == second.headers["idempotency-key"]
    assert first.body == second.body
    assert metering.flush(10.0)
    assert stat("retried") == 1
    assert stat("delivered") == 1


def test_retry_after_is_capped_by_max_retry_wait(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    # The fixture's max_retry_wait is 0.05 s: a server asking for an hour must not stall
    # the record for an hour.
    metered.respond_with(503, retry_after=3600)
    chat(client(sim))
    wait_records(metered, 1, 5.0)
    first, second = metered.received
    assert second.time - first.time < 2.0
    assert metering.flush(10.0)
    assert stat("delivered") == 1


# --- 409 and x-should-retry --------------------------------------------------------------


def test_409_in_progress_with_retry_after_is_retried(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    metered.respond_with(409, retry_after=1)  # idempotency_key_in_progress
    chat(client(sim))
    assert metering.flush(10.0)
    assert statuses(metered) == [409, 201]
    assert len(metered.records) == 1
    assert stat("retried") == 1
    assert stat("delivered") == 1
    assert stat("failed.409") == 0


def test_409_without_retry_after_is_permanent(
    sim: OllamaSimulator, metered: FakeMeteringAPI, caplog: pytest.LogCaptureFixture
) -> None:
    metered.respond_with(409, body={"error": "idempotency_key_mismatch"})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        chat(client(sim))
        assert metering.flush(10.0)
    assert statuses(metered) == [409]
    assert metered.records == []
    assert stat("failed.409") == 1
    assert stat("retried") == 0
    assert stat("delivered") == 0
    [log] = our_logs(caplog)
    assert "409" in log.getMessage()
    assert "idempotency_key_mismatch" in log.getMessage()


def test_should_retry_false_on_503_is_not_retried(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    metered.respond_with(503, headers={"x-should-retry": "false"})
    chat(client(sim))
    assert metering.flush(10.0)
    assert statuses(metered) == [503]
    assert metered.records == []
    assert stat("retried") == 0
    assert stat("failed.503") == 1


def test_should_retry_true_on_400_is_retried(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    metered.respond_with(400, headers={"x-should-retry": "true"})
    chat(client(sim))
    assert metering.flush(10.0)
    assert statuses(metered) == [400, 201]
    assert len(metered.records) == 1
    assert stat("retried") == 1
    assert stat("delivered") == 1
    assert stat("failed.400") == 0


# --- permanent failures and what they log -------------------------------------------------


@pytest.mark.usefixtures("fresh_warnings")
@pytest.mark.parametrize("status", [401, 403])
def test_auth_failure_is_not_retried_and_logged_once_without_the_key(
    sim: OllamaSimulator,
    metered: FakeMeteringAPI,
    caplog: pytest.LogCaptureFixture,
    status: int,
) -> None:
    used_key = API_KEY
    if status == 401:
        used_key = "hak_wrong_key_abcdef123"
        metering.configure(api_key=used_key)  # the fake itself answers 401 to this key
    c = client(sim)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        if status == 403:
            metered.respond_with(403)
        chat(c)
        assert metering.flush(10.0)
        assert statuses(metered) == [status]
        assert stat(f"failed.{status}") == 1
        logs = [r for r in our_logs(caplog) if str(status) in r.getMessage()]
        assert len(logs) == 1, [r.getMessage() for r in our_logs(caplog)]
        assert logs[0].levelno in (logging.WARNING, logging.ERROR)
        assert KEY_VARIABLE in logs[0].getMessage()

        # Another record, refused the same way: counted, not logged again.
        if status == 403:
            metered.respond_with(403)
        chat(c)
        assert metering.flush(10.0)
        assert statuses(metered) == [status, status]
        assert stat(f"failed.{status}") == 2
        assert len([r for r in our_logs(caplog) if str(status) in r.getMessage()]) == 1

    assert metered.records == []
    assert stat("retried") == 0
    assert stat("delivered") == 0
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    for record in caplog.records:
        text = formatter.format(record)
        assert used_key not in text
        assert API_KEY not in text


def test_400_is_not_retried_and_logs_the_server_reason(
    sim: OllamaSimulator, metered: FakeMeteringAPI, caplog: pytest.LogCaptureFixture
) -> None:
    metered.respond_with(400, body={"message": "bad field traceId"})
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        chat(client(sim))
        assert metering.flush(10.0)
    assert statuses(metered) == [400]
    assert metered.records == []
    assert stat("failed.400") == 1
    assert stat("retried") == 0
    [log] = our_logs(caplog)
    assert log.levelno == logging.WARNING
    assert "400" in log.getMessage()
    assert "bad field traceId" in log.getMessage()


@pytest.mark.parametrize("status", [404, 422])
def test_other_permanent_statuses_are_not_retried(
    sim: OllamaSimulator, metered: FakeMeteringAPI, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    metered.respond_with(status)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        chat(client(sim))
        assert metering.flush(10.0)
    assert statuses(metered) == [status]
    assert metered.records == []
    assert stat(f"failed.{status}") == 1
    assert stat("retried") == 0
    [log] = our_logs(caplog)
    assert str(status) in log.getMessage()


# --- an API that does not answer, or is not there -----------------------------------------


def test_hanging_api_does_not_delay_the_call_and_gives_up_after_max_attempts(
    sim: OllamaSimulator, isolated: FakeMeteringAPI
) -> None:
    api = isolated
    c = client(sim)
    # Metering is already running (as in any application that made a call before
    # reconfiguring): the new settings must apply from here on.
    chat(c)
    assert metering.flush(10.0)
    assert stat("delivered") == 1
    api.clear()

    metering.configure(request_timeout=0.3, max_attempts=2)
    api.set_mode("hang")
    started = time.monotonic()
    chat(c)
    elapsed = time.monotonic() - started
    assert elapsed < 0.25, f"the call took {elapsed:.3f}s with the metering API hanging"
    assert stat("dropped.retries_exhausted") == 0  # returned before delivery gave up

    wait_until(
        lambda: stat("dropped.retries_exhausted") == 1,
        timeout=6.0,
        what="the record given up after 2 attempts of 0.3 s",
    )
    assert len(api.received) == 2
    assert {r.status for r in api.received} == {None}
    assert stat("retried") == 1
    assert stat("delivered") == 1  # the first record only
    assert api.records == []


def test_connection_refused_is_retried_then_dropped(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    with FakeMeteringAPI() as gone:
        closed_url = gone.url
    metering.configure(base_url=closed_url, max_attempts=3)
    started = time.monotonic()
    chat(client(sim))
    assert time.monotonic() - started < 1.0
    wait_until(
        lambda: stat("dropped.retries_exhausted") == 1,
        timeout=10.0,
        what="the record dropped after 3 refused connections",
    )
    assert stat("retried") == 2
    assert stat("delivered") == 0
    assert metered.received == []


# --- settings that make delivery impossible -----------------------------------------------


@pytest.mark.usefixtures("fresh_warnings")
def test_no_api_key_sends_nothing_and_warns_once(
    sim: OllamaSimulator, metered: FakeMeteringAPI, caplog: pytest.LogCaptureFixture
) -> None:
    metering.configure(api_key="")
    c = client(sim)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            chat(c)
        assert metering.flush(10.0)
    assert metered.received == []
    assert stat("dropped.no_api_key") == 3
    assert stat("recorded") == 3
    assert stat("delivered") == 0
    logs = our_logs(caplog)
    assert len(logs) == 1, [r.getMessage() for r in logs]
    assert logs[0].levelno == logging.WARNING
    assert KEY_VARIABLE in logs[0].getMessage()


@pytest.mark.usefixtures("fresh_warnings")
def test_unusable_base_url_drops_records_and_logs_one_error(
    sim: OllamaSimulator, metered: FakeMeteringAPI, caplog: pytest.LogCaptureFixture
) -> None:
    c = client(sim)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        metering.configure(base_url="ftp://x")
        for _ in range(3):
            chat(c)
        assert metering.flush(10.0)
    assert metered.received == []
    assert stat("dropped.invalid_base_url") == 3
    assert stat("delivered") == 0
    errors = [r for r in our_logs(caplog) if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in our_logs(caplog)]
    assert "ftp://x" in errors[0].getMessage()
    assert "http" in errors[0].getMessage()
    # At most one more line (a warning that records are not sent), not one per record.
    assert len(our_logs(caplog)) <= 2


# --- flush and shutdown --------------------------------------------------------------------


def test_flush_returns_true_once_everything_is_delivered(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    c = client(sim)
    for _ in range(5):
        chat(c)
    assert metering.flush(10.0) is True
    assert len(metered.records) == 5
    assert stat("delivered") == 5
    assert metering.stats()["queued"] == 0


def test_calls_after_a_flush_are_batched_again(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    # A flush asks the delivery thread not to linger; once it is answered, the next wake-up
    # must linger again, or every call after a flush wakes the thread (and takes the GIL
    # from the caller) on its own. A record is built only after the linger.
    c = client(sim)
    chat(c)
    assert metering.flush(10.0) is True
    for _ in range(2):  # after the first flush, and after a second one
        # Not flush() before the record is built: that would ask for no linger again.
        assert linger_of(c) >= 0.015  # the linger is 0.02 s
        assert metering.flush(10.0) is True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="timerfd is Linux's")
def test_the_first_call_of_a_burst_arms_a_timer_instead_of_waking_the_thread(
    sim: OllamaSimulator, metered: FakeMeteringAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The thread is woken once, when the linger is over: not at once only to start it.
    c = client(sim)
    chat(c)
    assert metering.flush(10.0) is True
    wakes: list[float] = []
    set_wake = dispatcher._set_wake

    def counted_wake() -> None:
        wakes.append(time.perf_counter())
        set_wake()

    monkeypatch.setattr(dispatcher, "_set_wake", counted_wake)
    assert linger_of(c, calls=3) >= 0.015  # the linger (0.02 s) still applies
    assert wakes == []
    assert metering.flush(10.0) is True
    assert len(metered.records) == 4


def test_without_a_kernel_timer_the_thread_is_woken_at_once_and_still_lingers(
    sim: OllamaSimulator, isolated: FakeMeteringAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(LingerTimer, "create", staticmethod(lambda seconds: None))
    assert metering.shutdown(5.0) is True  # the next call starts a thread without one
    c = client(sim)
    chat(c)
    assert metering.flush(10.0) is True
    assert dispatcher._timer is None
    assert linger_of(c) >= 0.015
    assert metering.flush(10.0) is True
    assert len(isolated.records) == 2


def test_flush_returns_false_when_the_api_hangs(
    sim: OllamaSimulator, isolated: FakeMeteringAPI
) -> None:
    isolated.set_mode("hang")
    chat(client(sim))
    started = time.monotonic()
    assert metering.flush(0.3) is False
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3.0, elapsed
    assert metering.stats()["queued"] >= 1
    isolated.set_mode("normal")
    assert metering.flush(10.0) is True
    assert len(isolated.records) == 1


def test_metering_restarts_by_itself_after_shutdown(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    c = client(sim)
    chat(c)
    assert metering.shutdown(5.0) is True
    assert len(metered.records) == 1
    assert metering.stats()["queued"] == 0
    chat(c)
    records = wait_records(metered, 2, 10.0)
    assert len({r["transactionId"] for r in records}) == 2
    assert metering.flush(10.0)
    assert stat("delivered") == 2


def test_flush_waits_for_a_record_still_waiting_for_a_delivery_slot(
    sim: OllamaSimulator, isolated: FakeMeteringAPI
) -> None:
    api = isolated
    # One request in flight at a time; shutdown() so that the restarted thread takes it
    # (see test_max_in_flight_is_honoured_once_metering_runs).
    metering.configure(max_in_flight=1)
    assert metering.shutdown(5.0)
    c = client(sim)
    for trial in range(10):
        api.clear()
        api.respond_with(503, times=2)  # the first record takes a few attempts
        for _ in range(3):
            chat(c)
        assert metering.flush(10.0)
        # flush() said everything was delivered or given up on: nothing may arrive later.
        assert len(api.records) == 3, f"trial {trial}: stats={metering.stats()}"


def test_records_awaiting_the_api_hold_no_context_each(
    sim: OllamaSimulator, isolated: FakeMeteringAPI
) -> None:
    # A record in flight lives as long as the API takes to answer: long enough to end up in
    # the garbage collector's oldest generation, whose full collections every thread then
    # pays for. asyncio copies a context for each task, done callback and timer unless
    # given one: three objects more for each record.
    api = isolated
    c = client(sim)
    calls = 20
    # As many connections as records in flight, opened first and left open for them.
    api.latency = 0.3
    for _ in range(calls):
        chat(c)
    assert metering.flush(10.0)
    api.latency = 0.0
    api.clear()
    api.set_mode("hang")
    gc.collect()
    before = sum(1 for o in gc.get_objects() if type(o) is contextvars.Context)
    for _ in range(calls):
        chat(c)
    api.wait_for_received(calls)  # all of them in flight, held by the API
    gc.collect()
    during = sum(1 for o in gc.get_objects() if type(o) is contextvars.Context)
    # (Below one: a connection the API closed meanwhile is replaced, with a context of its
    # own. Python 3.10's create_task cannot be given one: a context each there.)
    assert (during - before) / calls < (1 if sys.version_info >= (3, 11) else 2)
    api.set_mode("normal")  # the held requests are dropped, and retried
    assert metering.flush(10.0)
    assert len(api.records) == calls


# --- overflow ------------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_warnings")
def test_queue_overflow_drops_with_one_warning_and_calls_succeed(
    sim: OllamaSimulator, isolated: FakeMeteringAPI, caplog: pytest.LogCaptureFixture
) -> None:
    api = isolated
    metering.configure(queue_size=5, max_in_flight=1)
    # shutdown() so that the restarted thread takes max_in_flight (see
    # test_max_in_flight_is_honoured_once_metering_runs).
    assert metering.shutdown(5.0)
    api.set_mode("hang")
    c = client(sim)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(30):
            chat(c)  # each call returns its answer
    # Held: five in the queue, one request in flight, and the batch the delivery thread took
    # from the queue after it (at most what the queue held: five). Whether that request went
    # out alone or as the first of a batch depends on timing, so the bound is the larger.
    held = 5 + 1 + 5
    assert stat("dropped.queue_full") >= 30 - held
    assert stat("dropped.queue_full") + metering.stats()["queued"] == 30
    assert metering.stats()["queued"] <= held
    full = [r for r in our_logs(caplog) if "queue is full" in r.getMessage()]
    assert len(full) == 1, [r.getMessage() for r in full]
    api.set_mode("normal")
    # Counted once the API has answered, so the counter is what to wait for.
    wait_until(
        lambda: stat("delivered") + stat("dropped.queue_full") == 30,
        timeout=10.0,
        what="every call either delivered or counted as dropped",
    )
    assert 1 <= len(api.records) <= held
    # The API stores a record before its answer reaches the delivery thread, which counts it.
    assert metering.flush(10.0)
    assert stat("delivered") == len(api.records)


def test_max_in_flight_is_honoured_once_metering_runs(
    sim: OllamaSimulator, isolated: FakeMeteringAPI
) -> None:
    api = isolated
    c = client(sim)
    chat(c)  # metering is running before it is reconfigured
    assert metering.flush(10.0)
    api.clear()
    metering.configure(max_in_flight=1)
    api.set_mode("hang")
    for _ in range(6):
        chat(c)
    wait_received(api, 1, 5.0)
    # The others follow in well under a second if more than one may be in flight.
    with pytest.raises(TimeoutError):
        api.wait_for_received(2, timeout=1.0)
    api.set_mode("normal")
    assert metering.flush(10.0)
    assert len(api.records) == 6


# --- secrets -------------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_warnings")
def test_no_log_line_shows_the_api_key_or_a_credential(
    sim: OllamaSimulator, metered: FakeMeteringAPI, caplog: pytest.LogCaptureFixture
) -> None:
    c = client(sim)
    subscriber = {"subscriber": {"credential": {"name": "k", "value": CREDENTIAL}}}
    with caplog.at_level(logging.DEBUG, logger=LOGGER), usage_metadata(subscriber):
        metered.respond_with(500, times=2)
        chat(c)  # retried, then stored
        assert metering.flush(10.0)
        metered.respond_with(401)
        chat(c)  # refused: the key is named, not shown
        assert metering.flush(10.0)
        metered.respond_with(400, body={"message": f"x-api-key {API_KEY} is not allowed here"})
        chat(c)  # a server that echoes the key
        assert metering.flush(10.0)
        metered.respond_with(503, times=2)
        metering.configure(max_attempts=2)
        chat(c)  # given up on
        assert metering.flush(10.0)

    assert stat("delivered") == 1
    assert stat("failed.401") == 1
    assert stat("failed.400") == 1
    assert stat("dropped.retries_exhausted") == 1
    [stored] = metered.records
    assert stored["subscriber"]["credential"] == {"name": "k", "value": CREDENTIAL}

    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    texts = [formatter.format(r) for r in caplog.records]
    debug = [t for t in texts if "metering record {" in t]
    assert len(debug) == 4, texts  # one debug line per record, so the check below means something
    assert all('"credential":{"name":"k","value":"***"}' in t for t in debug), debug
    assert any("401" in t and KEY_VARIABLE in t for t in texts), texts
    for text in texts:
        assert API_KEY not in text
        assert CREDENTIAL not in text


# --- interpreter exit ------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import atexit
    import sys

    # Registered first, so it runs after the library's own atexit handler.
    atexit.register(
        lambda: print("stats at exit:", sys.modules[REVENIUM].stats(), file=sys.stderr)
    )
    REVENIUM = "revenium_ollama_transport"

    import ollama

    from revenium_ollama_transport import ReveniumTransport

    c = ollama.Client(host=sys.argv[1], transport=ReveniumTransport())
    for _ in range(5):
        answer = c.chat(model="qwen2.5:0.5b", messages=[{"role": "user", "content": "hi"}])
        assert answer.message.content, answer
    print("calls done", flush=True)
    """
)


def run_child(
    tmp_path: Path,
    sim: OllamaSimulator,
    api: FakeMeteringAPI,
    base_url: str | None = None,
    **env: str,
) -> tuple[subprocess.CompletedProcess[str], float]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    environment = {
        "REVENIUM_METERING_API_KEY": API_KEY,
        "REVENIUM_METERING_BASE_URL": base_url or api.url,
        "REVENIUM_LOG_LEVEL": "WARNING",
        **env,
    }
    started = time.monotonic()
    done = run_python(script, environment, sim.url, timeout=30)
    return done, time.monotonic() - started


def _localhost_is_loopback() -> bool:
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo("localhost", 80)}
    except OSError:
        return False
    return "127.0.0.1" in addresses


# "localhost": a base URL with a host name (as the real one, api.revenium.ai), which needs a
# name lookup for every new connection, also at interpreter exit.
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_records_are_delivered_at_interpreter_exit(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI, host: str
) -> None:
    if host == "localhost" and not _localhost_is_loopback():
        pytest.skip("localhost does not resolve to 127.0.0.1 here")
    done, _ = run_child(tmp_path, sim, api, base_url=f"http://{host}:{api.port}")
    assert done.returncode == 0, done.stderr
    assert "calls done" in done.stdout
    # The child exits only after the atexit handler has seen its records answered.
    records = api.records
    assert len(records) == 5, f"{len(records)} records stored; child's stderr:\n{done.stderr}"
    assert len({r["transactionId"] for r in records}) == 5
    assert all(r.headers["x-api-key"] == API_KEY for r in api.received)


def test_exit_is_bounded_by_the_shutdown_timeout_when_the_api_hangs(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI
) -> None:
    api.set_mode("hang")
    try:
        done, elapsed = run_child(tmp_path, sim, api, REVENIUM_SHUTDOWN_TIMEOUT="1")
    finally:
        api.set_mode("normal")
    assert done.returncode == 0, done.stderr
    assert "calls done" in done.stdout
    assert elapsed < 10.0, f"the child took {elapsed:.1f}s to exit"
    assert len(api.received) >= 1  # delivery was under way, held by the hanging API
    assert api.records == []
    assert "not delivered" in done.stderr, done.stderr


# --- threads and fork --------------------------------------------------------------------------


def test_concurrent_callers_keep_their_own_metadata(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    threads, calls = 8, 25

    def work(index: int) -> None:
        c = client(sim)
        with usage_metadata(trace_id=f"trace-{index}"):
            for _ in range(calls):
                chat(c, model=f"model-{index}:latest")

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(work, i) for i in range(threads)]:
            future.result()
    assert metering.flush(20.0)
    records = wait_records(metered, threads * calls, 10.0)
    assert len(records) == threads * calls
    assert len({r["transactionId"] for r in records}) == threads * calls
    for record in records:
        index = record["model"].removeprefix("model-").removesuffix(":latest")
        assert record["traceId"] == f"trace-{index}", record
    assert Counter(r["traceId"] for r in records) == {f"trace-{i}": calls for i in range(threads)}
    assert stat("delivered") == threads * calls


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.parametrize("spool", [False, True])
def test_forked_child_meters_its_own_calls_and_not_the_parents(
    sim: OllamaSimulator, isolated: FakeMeteringAPI, tmp_path: Path, spool: bool
) -> None:
    api = isolated
    if spool:  # the parent's records are written ahead to a spool the child shares
        metering.configure(spool_dir=str(tmp_path / "spool"))
    c = client(sim)
    api.set_mode("hang")  # parent records stay in flight or queued across the fork
    with usage_metadata(trace_id="parent"):
        for _ in range(12):
            chat(c)
    wait_received(api, 1, 5.0)
    assert metering.stats()["queued"] >= 1

    # The child delivers to an API of its own: a parent's record arriving there would be
    # one the child delivered.
    with FakeMeteringAPI(expected_api_key=API_KEY) as child_api:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork with threads
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                metering.configure(base_url=child_api.url)
                with usage_metadata(trace_id="child"):
                    answer = ollama.Client(host=sim.url, transport=ReveniumTransport()).chat(
                        model=MODEL, messages=MESSAGES
                    )
                code = 0 if answer.message.content == ANSWER and metering.flush(15.0) else 2
            finally:
                os._exit(code)

        # The parent's API is released only once the child is gone: releasing drops the held
        # requests, the parent counts an outage and hands its records to the shared spool as
        # waiting, where any process (a live child too) may replay them - by design.
        deadline = time.monotonic() + 30.0
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child did not exit within 30 s")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0
        api.set_mode("normal")
        assert metering.flush(10.0)
        # Records the released requests left in the spool are the replay's to deliver, which
        # flush() does not wait for.
        wait_records(api, 12, 10.0)
        if spool:
            wait_until(
                lambda: not list((tmp_path / "spool").glob("*.jsonl*")), 10.0, "an empty spool"
            )

    # Each record delivered by the process that made it, and once: a second delivery of a
    # stored record would be answered 201 again (de-duplicated), so count the 201s.
    for fake, trace, calls in ((api, "parent", 12), (child_api, "child", 1)):
        records = fake.records
        assert Counter(r.get("traceId") for r in records) == {trace: calls}, trace
        stored_answers = Counter(
            r.record["transactionId"] for r in fake.received if r.status == 201 and r.record
        )
        assert set(stored_answers) == {r["transactionId"] for r in records}
        assert set(stored_answers.values()) == {1}, stored_answers


SIGNAL_CHILD = """
import os, signal, sys
import ollama
{before}
import revenium_ollama_transport
client = ollama.Client(host=sys.argv[1])
for _ in range(5):
    client.chat(model="m", messages=[])
print("ready", flush=True)
os.kill(os.getpid(), signal.SIGTERM)
print("after the signal", flush=True)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX")
@pytest.mark.parametrize("app_handler", [False, True])
def test_sigterm_delivers_then_does_what_the_signal_would_have_done(
    tmp_path: Path, sim: OllamaSimulator, api: FakeMeteringAPI, app_handler: bool
) -> None:
    before = ""
    if app_handler:
        before = (
            "signal.signal(signal.SIGTERM, lambda s, f: (print('app handler', flush=True), "
            "sys.exit(3)))"
        )
    script = tmp_path / "child.py"
    script.write_text(SIGNAL_CHILD.format(before=before))
    done = run_python(
        script,
        {"REVENIUM_METERING_API_KEY": API_KEY, "REVENIUM_METERING_BASE_URL": api.url},
        sim.url,
    )
    assert "ready" in done.stdout, done.stderr
    assert len(api.wait_for_records(5)) == 5  # delivered before the process went
    if app_handler:
        assert "app handler" in done.stdout
        assert done.returncode == 3
    else:
        assert done.returncode == -signal.SIGTERM  # the default action, as without us
        assert "after the signal" not in done.stdout


def test_uninstall_puts_the_signal_handlers_back() -> None:
    installed = signal.getsignal(signal.SIGTERM)
    metering.uninstall()
    try:
        assert signal.getsignal(signal.SIGTERM) is not installed
    finally:
        metering.install()
    assert signal.getsignal(signal.SIGTERM) is not None


def test_on_delivery_error_is_told_about_each_record_not_delivered(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    told: list[metering.DeliveryError] = []
    metering.configure(on_delivery_error=told.append)
    metered.respond_with(422, body={"message": "unknown model"})
    chat(client(sim))
    assert metering.flush(10.0)
    [error] = told
    assert (error.reason, error.status) == ("refused", 422)
    assert "unknown model" in error.message
    assert error.record["transactionId"] == error.transaction_id


def test_stats_tell_the_age_of_the_oldest_undelivered_record(
    sim: OllamaSimulator, metered: FakeMeteringAPI
) -> None:
    assert metering.stats()["oldest_undelivered_seconds"] == 0
    metering.configure(request_timeout=5.0)
    metered.set_mode("hang")
    chat(client(sim))
    wait_until(lambda: len(metered.received) >= 1 or metered.mode == "hang", 5.0, "a request")
    wait_until(lambda: metering.stats()["oldest_undelivered_seconds"] > 0.2, 5.0, "an aging record")
    metered.set_mode("normal")

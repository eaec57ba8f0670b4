"""Delivery: a bounded queue, and one background thread that turns observations into
records and POSTs them to the metering API, several requests in flight, with tenacity
retries.

The caller's side of this module is ``submit``: a length check, a deque append and, only
when the thread is asleep, one wake-up. Everything else happens in the thread.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import email.utils
import functools
import logging
import math
import os
import sys
import threading
import time
from asyncio import Task
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from . import _config, _ids, _ledger, _metadata
from ._config import DeliveryError
from ._http import Reply, Sender, SendError, sender_for
from ._linger_timer import LingerTimer
from ._log import secret_filter
from ._observation import CallObservation
from ._record import MeteringRecord, build_record
from ._spool import Claim, Spool, SpooledRecord
from ._spool_dir import has_waiting
from ._stats import counters, internal_failure

logger = logging.getLogger("revenium_ollama_transport")

# Once woken, the thread waits this long before draining, so that a busy caller pays for
# one wake-up per batch, not one per call.
_LINGER = 0.02
THREAD_NAME = "revenium-metering"  # the delivery thread's

RecordListener = Callable[[MeteringRecord], None]


class _Transient(Exception):
    """A failure worth another attempt; ``retry_after`` is the server's wish, in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class _Parked(Exception):
    """An outage: a record already in the spool waits there instead of being sent."""


# Transient failures in a row that make an outage.
_OUTAGE_AFTER = 3
# The longest the spool's replay waits between probes of a failing API, and the most of a
# Retry-After it honours.
_REPLAY_MAX_PAUSE = 60.0


class _Permanent(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _server_reason(reply: Reply) -> str:
    try:
        body = orjson.loads(reply.body)
    except orjson.JSONDecodeError:
        return reply.body[:200].decode("utf-8", "replace") or f"HTTP {reply.status}"
    if isinstance(body, dict):
        for key in ("message", "error", "detail", "errorMessage"):
            value = body.get(key)
            if isinstance(value, str):
                return value[:200]
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return str(value["message"])[:200]
    return orjson.dumps(body).decode()[:200]


def classify_response(reply: Reply) -> None:
    """Returns for a stored record; raises ``_Transient`` or ``_Permanent`` otherwise."""
    status = reply.status
    if 200 <= status < 300:
        return
    should_retry = reply.headers.get("x-should-retry", "").strip().lower()
    retry_after = parse_retry_after(reply.headers.get("retry-after"))
    transient = status in (408, 429) or status >= 500 or (status == 409 and retry_after is not None)
    if should_retry == "true":
        transient = True
    elif should_retry == "false":
        transient = False
    reason = _server_reason(reply)
    if transient:
        raise _Transient(f"HTTP {status}: {reason}", retry_after)
    raise _Permanent(status, reason)


def _wait(max_wait: float) -> Callable[[RetryCallState], float]:
    backoff = wait_random_exponential(multiplier=0.25, max=max_wait)

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome
        exception = outcome.exception() if outcome is not None else None
        if isinstance(exception, _Transient) and exception.retry_after is not None:
            return min(exception.retry_after, max_wait)
        return float(backoff(state))

    return wait


def _spawn(coroutine: Coroutine[Any, Any, None], context: contextvars.Context) -> Task[None]:
    """A task running in ``context`` (Python 3.11+; 3.10 copies one for each task)."""
    if sys.version_info >= (3, 11):
        return asyncio.create_task(coroutine, context=context)
    return asyncio.create_task(coroutine)


async def retry_after_first(
    once: Callable[[], Awaitable[None]], first: _Transient, settings: _config.Settings
) -> None:
    """Attempts 2..max_attempts of ``once`` with tenacity, after a first attempt that
    failed with ``first``: the delivery thread's retries, and ``revenium-ollama upload``'s."""
    replay: _Transient | None = first
    retrying = AsyncRetrying(
        stop=stop_after_attempt(settings.max_attempts),
        wait=_wait(settings.max_retry_wait),
        retry=retry_if_exception_type(_Transient),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            if replay is not None:
                # Tenacity's attempt 1 is the one already made: replaying its failure
                # lets tenacity count it and wait as its answer (Retry-After) asks.
                failure, replay = replay, None
                raise failure
            counters.add("retried")
            await once()


class _Batch:
    """Records taken from the queue together, and the spool file written for them."""

    __slots__ = ("claim", "items", "left", "pending", "spool")

    def __init__(
        self, items: list[tuple[MeteringRecord, bytes]], spool: Spool | None, claim: Claim | None
    ) -> None:
        self.items = items
        self.spool = spool
        self.claim = claim
        self.pending = len(items)
        self.left: list[SpooledRecord] = []  # settled undelivered: they wait in the spool


# The most records one batch takes from the queue, and so one spool file holds.
_BATCH = 512


class Dispatcher:
    """Owns the queue and the delivery thread. One per process (re-made after fork)."""

    def __init__(self) -> None:
        self._queue: deque[CallObservation] = deque()
        # Re-entrant: a signal handler may flush while the main thread holds it.
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._asleep = False
        # Where the kernel can time it (Linux), the first record of a burst arms a timer
        # that wakes the thread when its linger is over, instead of waking it at once.
        self._timer: LingerTimer | None = None
        self._linger_done = False  # the timer woke the thread: its linger is over already
        self._stopping = False
        # flush() calls waiting: while there are any, the thread drains without lingering.
        self._flushes_waiting = 0
        self._in_flight = 0
        self._settings = _config.Settings()
        self._settings_stale = True
        self._since: dict[str, float] = {}  # records in hand -> when their call ended
        self._spool: Spool | None = None
        self._abandon = False  # shutdown's deadline passed: spool what is left and stop
        self._replaying: asyncio.Task[None] | None = None
        self._senders: _Senders | None = None
        self._slot_freed: asyncio.Event | None = None
        # The API's state as all deliveries see it: after a few transient failures in a row
        # it is an outage, and records written ahead wait in the spool instead of each
        # retrying on its own; the spool's replay probes, one request at a time.
        self._failures_in_a_row = 0
        self._outage = False
        # The API's last Retry-After, as a time.monotonic(): the replay's probes wait for it.
        self._quiet_until = 0.0
        self._key_refused = False  # 401 / 403: spooled records wait for another key
        self._spool_key: tuple[str | None, float] | None = None
        self._listeners: list[RecordListener] = []
        self._ledger = _ledger.LedgerWriter()
        self._warned: set[str] = set()
        self._last_overflow_warning = 0.0

    # --- the caller's side ------------------------------------------------------------

    def submit(self, observation: CallObservation) -> None:
        queue = self._queue
        if len(queue) >= self._settings.queue_size:
            self._overflow()
            return
        queue.append(observation)
        if self._thread is None:
            self._start()
        elif self._asleep:
            self._asleep = False
            timer = self._timer
            if timer is None:
                self._call_in_loop(self._set_wake)
            else:
                timer.arm()

    def _overflow(self) -> None:
        counters.add("dropped.queue_full")
        now = time.monotonic()
        if now - self._last_overflow_warning >= 10.0:
            self._last_overflow_warning = now
            logger.warning(
                "metering queue is full (%d records); dropping records (%d so far)",
                self._settings.queue_size,
                counters.get("dropped.queue_full"),
            )

    def _linger_over(self, timer: LingerTimer) -> None:
        timer.clear()
        self._linger_done = True
        if self._wake is not None:
            self._wake.set()

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()
        if self._abandon and self._slot_freed is not None:
            self._slot_freed.set()  # a drain waiting for a free slot must stop waiting

    def _call_in_loop(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            return
        # RuntimeError: the loop closed under us, its thread is ending.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(callback)

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stopping = False
            # Not waited for: the thread drains whatever is queued when it gets going.
            thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
            self._thread = thread
            thread.start()

    def start_if_spooled(self) -> None:
        """Starts delivery at once when the spool holds records (from an earlier process)."""
        try:
            if self._thread is None and has_waiting(_config.current().spool_dir):
                self._start()
        except Exception:
            internal_failure("spool-start")

    def queued(self) -> int:
        return len(self._queue) + self._in_flight

    def settings_changed(self) -> None:
        self._settings_stale = True
        self._call_in_loop(self._set_wake)

    def add_listener(self, listener: RecordListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: RecordListener) -> None:
        self._listeners.remove(listener)

    def flush(self, timeout: float | None = None) -> bool:
        """Waits until every record submitted so far is out of hand: delivered, refused,
        dropped, or in the spool for the replay."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            self._flushes_waiting += 1
            try:
                self._call_in_loop(self._set_wake)
                while self._queue or self._in_flight:
                    if self._thread is None:
                        return False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._idle.wait(remaining if remaining is None else min(remaining, 0.5))
                return True
            finally:
                self._flushes_waiting -= 1

    def shutdown(self, timeout: float | None = None) -> bool:
        """Delivers what it can within ``timeout``, then stops the thread."""
        if self._thread is None:
            dropped = len(self._queue)
            self._queue.clear()
            if dropped:
                counters.add("dropped.shutdown", dropped)
            return dropped == 0
        delivered = self.flush(timeout)
        thread = self._thread
        self._stopping = True
        self._abandon = not delivered
        self._call_in_loop(self._set_wake)
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        left = len(self._queue) + self._in_flight
        if left:
            self._queue.clear()
            counters.add("dropped.shutdown", left)
            logger.warning("shutdown: %d metering records were not delivered in time", left)
        return delivered and left == 0

    def shutdown_on_signal(self) -> None:
        """Delivery before a SIGTERM / SIGINT takes its course (see ``_signals``)."""
        self.shutdown(self._settings.shutdown_timeout)

    def after_fork_in_child(self) -> None:
        """The parent delivers what it had queued; the child starts afresh."""
        self._queue.clear()
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._thread = None
        self._loop = None
        self._wake = None
        self._asleep = False
        if self._timer is not None:
            self._timer.close()  # the child's copy: armed here, it would wake the parent
            self._timer = None
        self._linger_done = False
        self._in_flight = 0
        self._flushes_waiting = 0  # the parent's, waiting in threads the child has not
        self._settings_stale = True
        self._spool = None  # the child opens its own, with its own lock
        self._spool_key = None
        self._failures_in_a_row = 0
        self._outage = False
        self._quiet_until = 0.0
        self._key_refused = False
        self._replaying = None
        self._senders = None
        self._ledger.after_fork_in_child()

    # --- the thread's side ------------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main())
        except Exception:
            internal_failure("delivery-thread")
        finally:
            try:
                loop.close()
            finally:
                with self._idle:
                    self._loop = None
                    self._wake = None
                    self._thread = None
                    self._idle.notify_all()

    def _refresh_settings(self) -> None:
        if not self._settings_stale:
            return
        self._settings_stale = False
        settings = _config.current()
        secret_filter.register(settings.api_key)
        # A new key or URL, or another spool: what the spool holds gets its chance again.
        replay = (settings.api_key, settings.base_url) != (
            self._settings.api_key,
            self._settings.base_url,
        )
        if replay:
            self._warned.clear()  # a new key or URL deserves its own warnings
            self._key_refused = False
            self._quiet_until = 0.0  # a Retry-After is the wish of the API that sent it
        self._settings = settings
        spool_key = (settings.spool_dir, settings.spool_max_mb)
        if self._loop is not None and spool_key != self._spool_key:
            replay = True
            self._spool_key = spool_key  # (re)opened in the delivery thread only
            self._spool = self._open_spool()
        if replay and self._senders is not None and self._loop is not None:
            self._start_replay(self._senders)

    async def _main(self) -> None:
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._senders = None  # a stopped thread's; the replay starts below with new ones
        self._spool_key = None
        self._settings_stale = True
        self._refresh_settings()
        senders = _Senders()
        tasks: set[asyncio.Task[None]] = set()
        slot_freed = self._slot_freed = asyncio.Event()
        # One context for every delivery task and its callback, where asyncio would copy
        # one for each: a record in flight then holds fewer objects for the garbage
        # collector's oldest generation to take in (see _spawn). The delivery code sets no
        # context variable.
        context = contextvars.copy_context()

        def done(task: asyncio.Task[None]) -> None:
            tasks.discard(task)
            slot_freed.set()
            self._out_of_hand(1)
            if self._stopping and not tasks:
                self._set_wake()

        self._abandon = False
        self._senders = senders
        self._start_replay(senders)
        loop = asyncio.get_running_loop()
        linger_timer = LingerTimer.create(_LINGER)
        if linger_timer is not None:
            loop.add_reader(linger_timer.fd, self._linger_over, linger_timer)
            self._timer = linger_timer
        # Batches written ahead while every delivery slot was taken, waiting for slots; and
        # how many records they hold (at most about queue_size: they are in memory too).
        written: deque[_Batch] = deque()
        held = 0
        try:
            queue = self._queue
            while True:
                if self._abandon:
                    await self._give_up(tasks)
                    return
                self._refresh_settings()
                while queue or written:
                    # What is queued now goes as one batch: built, written ahead to the spool
                    # (from here on, a process killed even with SIGKILL loses none of it),
                    # then sent.
                    if written:
                        batch = written.popleft()
                        held -= len(batch.items)
                    else:
                        batch = self._write_ahead(self._take_batch())
                    for index, (record, body) in enumerate(batch.items):
                        # The limit is read each time: configure() may change it any time.
                        while len(tasks) >= max(1, self._settings.max_in_flight):
                            if self._abandon:
                                break
                            if self._spool is not None and self._lingered(queue):
                                # No slot is free: what was queued meanwhile is written ahead
                                # now rather than when slots free up, so that a slow API does
                                # not widen what a SIGKILL loses. (Without a spool, records
                                # wait in the queue, which bounds them.)
                                full = held >= self._settings.queue_size
                                if full and written and written[0].claim is not None:
                                    # As many records in memory as the queue holds: the
                                    # oldest batch, on disk already, waits there instead,
                                    # for the replay.
                                    oldest = written.popleft()
                                    held -= len(oldest.items)
                                    self._unsent(oldest, oldest.items)
                                if held < self._settings.queue_size:
                                    written.append(self._write_ahead(self._take_batch()))
                                    held += len(written[-1].items)
                                    continue
                            slot_freed.clear()
                            # Woken once a slot frees; with a spool, also after the linger, to
                            # write ahead what was queued meanwhile.
                            timer = None
                            if self._spool is not None:
                                timer = loop.call_later(_LINGER, slot_freed.set)
                            try:
                                await slot_freed.wait()
                            finally:
                                if timer is not None:
                                    timer.cancel()
                            self._refresh_settings()
                        if self._abandon:  # the exit deadline passed while this batch waited
                            self._unsent(batch, batch.items[index:])
                            while written:
                                waiting = written.popleft()
                                held -= len(waiting.items)
                                self._unsent(waiting, waiting.items)
                            break
                        task = _spawn(self._deliver(senders, record, body, batch), context)
                        tasks.add(task)
                        task.add_done_callback(done, context=context)
                    if self._abandon:
                        break
                _ids.replenish()  # between batches: the calls to come find their ids ready
                if self._stopping and not tasks:
                    return
                self._wake.clear()
                self._asleep = True
                # The exit deadline may have passed while a slot was awaited: the wake-up
                # that said so is spent (just cleared), and nothing would come again.
                if queue or self._abandon or (self._stopping and not tasks):
                    self._asleep = False
                    continue
                with self._idle:
                    if not self._in_flight:
                        self._idle.notify_all()
                self._linger_done = False
                await self._wake.wait()
                self._asleep = False
                if not self._linger_done and not self._flushes_waiting and not self._stopping:
                    await asyncio.sleep(_LINGER)
        finally:
            if linger_timer is not None:
                self._timer = None  # submit() wakes the loop itself from now on
                loop.remove_reader(linger_timer.fd)
                linger_timer.close()
            replaying = self._replaying
            if replaying is not None:
                replaying.cancel()
                # Waited for: its claims go back to the spool only as the cancellation runs
                # through it, which takes more than the one turn of the loop left otherwise.
                await asyncio.gather(replaying, return_exceptions=True)
            self._ledger.close()
            await senders.aclose()

    def _open_spool(self) -> Spool | None:
        try:
            return Spool.open(self._settings.spool_dir, self._settings.spool_max_mb)
        except Exception:
            internal_failure("spool")
            return None

    async def _give_up(self, tasks: set[asyncio.Task[None]]) -> None:
        """The exit deadline has passed: what is in hand goes to the spool (or is counted
        as dropped without one), so that the next process delivers it."""
        spooled, dropped = counters.get("spooled"), counters.get("dropped.shutdown")
        for task in list(tasks):
            task.cancel()  # each one spools its record as it is cancelled
        await asyncio.gather(*tasks, return_exceptions=True)
        built: list[MeteringRecord] = []
        environment = _metadata.environment_layer()
        while self._queue:  # popped one by one: callers may still be appending
            record = self._record(self._queue.popleft(), environment)
            if record is not None:
                built.append(record)
        items = [(record, orjson.dumps(record.wire)) for record in built]
        self._to_ledger(items)
        left = [SpooledRecord(record.transaction_id, body) for record, body in items]
        if left:
            self._keep(left, "shutdown")
        spooled = counters.get("spooled") - spooled
        dropped = counters.get("dropped.shutdown") - dropped
        if spooled:
            logger.info("shutdown: %d metering records spooled for later delivery", spooled)
        if dropped:
            logger.warning(
                "shutdown: %d metering records were not delivered in time, and no spool "
                "keeps them (REVENIUM_SPOOL_DIR)",
                dropped,
            )

    def _start_replay(self, senders: _Senders) -> None:
        if self._spool is not None and self._replaying is None and not self._stopping:
            self._replaying = asyncio.create_task(self._replay(senders))

    async def _replay(self, senders: _Senders) -> None:
        """Delivers what the spool holds, oldest first, with this process's own records;
        backs off while the API keeps failing. Runs until the spool is empty."""
        pause = 1.0
        try:
            while not self._stopping and not self._key_refused:
                spool = self._spool  # read each round: configure() may have changed it
                if spool is None or not self._settings.api_key or self._settings.endpoint is None:
                    return  # nowhere to send them: they stay in the spool
                quiet = self._quiet_until - time.monotonic()
                if quiet > 0:
                    await asyncio.sleep(quiet)  # as the API asked (Retry-After)
                    continue
                claims = spool.claim(1 if self._outage else max(1, self._settings.max_in_flight))
                if not claims:
                    return
                slots = asyncio.Semaphore(max(1, self._settings.max_in_flight))
                try:
                    settled = await asyncio.gather(
                        *(self._replay_claim(senders, spool, claim, slots) for claim in claims)
                    )
                except BaseException:
                    # Cancelled: a claim whose delivery had not started is given back here
                    # (giving one back twice changes nothing).
                    for claim in claims:
                        spool.release(claim)
                    raise
                if all(settled):
                    pause = 1.0
                    continue
                await asyncio.sleep(pause)
                pause = min(pause * 2, _REPLAY_MAX_PAUSE)
        except asyncio.CancelledError:
            raise
        except Exception:
            internal_failure("replay")
        finally:
            self._replaying = None

    async def _replay_claim(
        self, senders: _Senders, spool: Spool, claim: Claim, slots: asyncio.Semaphore
    ) -> bool:
        async def one(record: SpooledRecord, probe: bool) -> bool:
            async with slots:
                later = await self._send(
                    senders, record.transaction_id, record.body, None, spooled=True, probe=probe
                )
            if later is None:
                counters.add("replayed")
            return later is None

        try:
            # The first record alone: during an outage it is the probe, one at a time.
            results = [await one(claim.records[0], probe=True)]
            if results[0]:
                results += await asyncio.gather(*(one(r, False) for r in claim.records[1:]))
        except BaseException:
            spool.release(claim)
            raise
        if all(results):
            spool.finish(claim)
            return True
        # What was not delivered (or not tried, after a failed probe) waits for the next try.
        left = [r for i, r in enumerate(claim.records) if i >= len(results) or not results[i]]
        spool.release(claim, left)
        return False

    def _record(
        self, observation: CallObservation, environment: dict[str, Any]
    ) -> MeteringRecord | None:
        """``environment``: the trace fields set in the environment, read once a batch
        (reading them takes 15 lookups in ``os.environ``, a third of building a record)."""
        try:
            layers = (environment, *observation.layers)
            if observation.header_metadata is not None:
                layers = (*layers, _metadata.header_layer(observation.header_metadata))
            if observation.call_metadata is not None:
                layers = (*layers, observation.call_metadata)
            record = build_record(observation, _metadata.resolve(layers))
        except Exception:
            internal_failure("record")
            counters.add("dropped.internal_error")
            return None
        counters.add("recorded")
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:
                internal_failure("listener")
        return record

    def _warn_once(
        self, key: str, message: str, *args: object, level: int = logging.WARNING
    ) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.log(level, message, *args)

    def _out_of_hand(self, count: int) -> None:
        """``count`` records taken from the queue are settled (or will be sent no more)."""
        lock = self._lock  # the condition's, taken without "with" (see Counters.add)
        lock.acquire()
        try:
            self._in_flight -= count
            if not self._in_flight and not self._queue:
                self._idle.notify_all()
        finally:
            lock.release()

    def _take_batch(self) -> list[MeteringRecord]:
        records: list[MeteringRecord] = []
        queue = self._queue
        environment = _metadata.environment_layer()
        while queue and len(records) < _BATCH:
            _ids.replenish(below=_ids.RESERVE // 2)  # a busy stretch: keep ids ready
            # Counted before it leaves the queue, so that flush() in another thread never
            # sees it in neither place.
            self._in_flight += 1
            observation = queue.popleft()
            record = self._record(observation, environment)
            if record is None:
                self._out_of_hand(1)
                continue
            self._since[record.transaction_id] = observation.mono_end or time.perf_counter()
            records.append(record)
        return records

    def _to_ledger(self, items: list[tuple[MeteringRecord, bytes]]) -> None:
        settings = self._settings
        if not settings.ledger_on or not items:
            return
        path = _ledger.resolve_path(settings.ledger_path)
        sent_live = bool(settings.api_key) and settings.endpoint is not None
        self._ledger.write(items, path, sent_live)
        if not settings.api_key:
            self._warn_once(
                "no-key-ledger",
                "REVENIUM_METERING_API_KEY is not set: metering records are kept in the "
                "local ledger at %s (see them with `revenium-ollama report`)",
                path,
                level=logging.INFO,
            )

    @staticmethod
    def _lingered(queue: deque[CallObservation]) -> bool:
        """Whether the queue is due to be written ahead: a whole batch, or its oldest record
        ended at least ``_LINGER`` ago."""
        if len(queue) >= _BATCH:
            return True
        try:
            ended = queue[0].mono_end
        except IndexError:
            return False
        return ended is None or time.perf_counter() - ended >= _LINGER

    def _write_ahead(self, records: list[MeteringRecord]) -> _Batch:
        """A batch taken from the queue: written to the spool (what the API needs) and
        then to the local ledger, before any of it is sent."""
        items = [(record, orjson.dumps(record.wire)) for record in records]
        spool = self._spool
        claim = None
        settings = self._settings
        # Without a key or a usable URL nothing is sent, and nothing is written ahead.
        if spool is not None and items and settings.api_key and settings.endpoint is not None:
            written = [SpooledRecord(record.transaction_id, body) for record, body in items]
            claim, evicted = spool.put_claimed(written)
            if evicted > 0:
                counters.add("dropped.spool_full", evicted)
        self._to_ledger(items)
        return _Batch(items, spool if claim is not None else None, claim)

    def _settle(self, batch: _Batch, transaction_id: str, body: bytes, delivered: bool) -> None:
        """One of the batch's records is done with; the last one decides its file's fate."""
        batch.pending -= 1
        if not delivered and batch.claim is not None:
            batch.left.append(SpooledRecord(transaction_id, body))
        if batch.pending or batch.spool is None or batch.claim is None:
            return
        if batch.left:
            # The undelivered wait in the spool for a later try; the delivered are not kept.
            batch.spool.release(batch.claim, batch.left)
            counters.add("spooled", len(batch.left))
            if self._senders is not None:
                self._start_replay(self._senders)
        else:
            batch.spool.finish(batch.claim)

    def _unsent(self, batch: _Batch, items: list[tuple[MeteringRecord, bytes]]) -> None:
        """Records of a batch that will not be sent from memory (the exit deadline passed,
        or memory is full of records waiting for a slot): they wait in the spool."""
        self._out_of_hand(len(items))
        for record, body in items:
            self._since.pop(record.transaction_id, None)
            if batch.claim is None:
                self._keep([SpooledRecord(record.transaction_id, body)], "shutdown")
            self._settle(batch, record.transaction_id, body, delivered=False)

    async def _deliver(
        self, senders: _Senders, record: MeteringRecord, body: bytes, batch: _Batch
    ) -> None:
        written = batch.claim is not None  # already on disk: settling tells its file's fate
        try:
            later = await self._send(
                senders, record.transaction_id, body, record.wire, spooled=written
            )
        except asyncio.CancelledError:  # the process is ending: the spool keeps it
            if not written:
                self._keep([SpooledRecord(record.transaction_id, body)], "shutdown")
            self._settle(batch, record.transaction_id, body, delivered=False)
            raise
        finally:
            self._since.pop(record.transaction_id, None)
        if later is not None and not written:
            self._keep([SpooledRecord(record.transaction_id, body)], "retries_exhausted", later)
        self._settle(batch, record.transaction_id, body, delivered=later is None)

    async def _send(
        self,
        senders: _Senders,
        transaction_id: str,
        body: bytes,
        wire: dict[str, Any] | None,
        spooled: bool = False,
        probe: bool = False,
    ) -> str | None:
        """Delivers one record; returns None when it is settled (delivered, refused, or
        dropped for good), or the reason it should be tried again later. A ``spooled``
        record (its spool file keeps it) is not sent during an outage or while the key is
        refused, unless it is the replay's ``probe``; and a refused key leaves it there."""
        settings = self._settings
        if logger.isEnabledFor(logging.DEBUG):
            shown = wire if wire is not None else orjson.loads(body)
            logger.debug("metering record %s", orjson.dumps(_redacted(shown)).decode())
        if spooled and (not settings.api_key or settings.endpoint is None):
            # Its spool file keeps it until there is somewhere to send it (the key or URL
            # was taken away since it was written).
            return "waiting in the spool for an API key and a usable base URL"
        if not settings.api_key:
            if settings.ledger_on:
                return None  # kept in the local ledger, and counted there
            counters.add("dropped.no_api_key")
            self._warn_once(
                "no-key",
                "REVENIUM_METERING_API_KEY is not set: metering records "
                "are not sent (the calls themselves are unaffected)",
            )
            return None
        endpoint = settings.endpoint
        if endpoint is None:
            counters.add("dropped.invalid_base_url")
            self._warn_once(
                "no-url",
                "REVENIUM_METERING_BASE_URL is not usable: metering "
                "records are not sent (see the error logged when it was read)",
            )
            return None
        sender, headers = senders.get(endpoint, settings)
        parked = spooled and not probe  # not sent during an outage or a refused key
        try:
            try:
                # Most records need no retry machinery at all; and no closure either, whose
                # cells would be garbage-collector-tracked objects while the record waits.
                await self._attempt(sender, body, headers, transaction_id, parked)
            except _Transient as first:
                once = functools.partial(
                    self._attempt, sender, body, headers, transaction_id, parked
                )
                await retry_after_first(once, first, settings)
        except _Parked:
            return "waiting in the spool (an outage, or a refused API key)"
        except _Transient as exc:
            return f"not delivered after {settings.max_attempts} attempts: {exc}"
        except _Permanent as exc:
            if exc.status in (401, 403) and spooled:
                # The key, not the record, is at fault: it waits for a key that works.
                self._key_refused = True
                self._warn_once(
                    f"auth-{exc.status}",
                    "the metering API refused the API key (HTTP %d: %s); check "
                    "REVENIUM_METERING_API_KEY: records wait in the spool until it changes",
                    exc.status,
                    exc,
                    level=logging.ERROR,
                )
                return f"the API key was refused (HTTP {exc.status})"
            counters.add(f"failed.{exc.status}")
            self._tell(transaction_id, body, wire, "refused", exc.status, str(exc))
            if exc.status in (401, 403):
                self._warn_once(
                    f"auth-{exc.status}",
                    "the metering API refused the API key "
                    "(HTTP %d: %s); check REVENIUM_METERING_API_KEY",
                    exc.status,
                    exc,
                    level=logging.ERROR,
                )
            else:
                logger.warning(
                    "metering record %s refused (HTTP %d): %s", transaction_id, exc.status, exc
                )
        except Exception:
            internal_failure("deliver")
            counters.add("dropped.internal_error")
            self._tell(transaction_id, body, wire, "internal_error", None, "see the debug log")
        else:
            counters.add("delivered")
        return None

    async def _attempt(
        self,
        sender: Sender,
        body: bytes,
        headers: dict[str, str],
        transaction_id: str,
        parked: bool,
    ) -> None:
        """One attempt to deliver a record (see ``_send``)."""
        if parked and (self._outage or self._key_refused):
            raise _Parked
        try:
            reply = await sender.post(body, headers, transaction_id)
        except SendError as exc:
            self._api_failed()
            raise _Transient(str(exc)) from exc
        try:
            classify_response(reply)
        except _Transient as exc:
            self._api_failed(exc.retry_after)
            raise
        self._api_answered()  # a refusal too: the API is up

    def _api_failed(self, retry_after: float | None = None) -> None:
        if retry_after:
            quiet = time.monotonic() + min(retry_after, _REPLAY_MAX_PAUSE)
            self._quiet_until = max(self._quiet_until, quiet)
        self._failures_in_a_row += 1
        if self._failures_in_a_row >= _OUTAGE_AFTER and not self._outage:
            self._outage = True
            logger.warning(
                "the metering API is failing: records wait in the spool, and it is probed "
                "one request at a time until it answers"
            )

    def _api_answered(self) -> None:
        self._failures_in_a_row = 0
        if self._outage:
            self._outage = False
            logger.warning("the metering API answers again: delivering the spooled records")

    def _keep(self, records: list[SpooledRecord], reason: str, message: str = "") -> None:
        """Records to deliver later: into the spool, or dropped (counted, told) without one."""
        spool = self._spool
        if spool is not None:
            evicted = spool.put(records)
            if evicted >= 0:
                counters.add("spooled", len(records))
                if evicted:
                    counters.add("dropped.spool_full", evicted)
                if self._senders is not None:
                    self._start_replay(self._senders)  # delivered once the API is back
                return
        counters.add(f"dropped.{reason}", len(records))
        for record in records:
            if message:
                logger.warning("metering record %s %s", record.transaction_id, message)
            self._tell(record.transaction_id, record.body, None, reason, None, message or reason)

    def _tell(
        self,
        transaction_id: str,
        body: bytes,
        wire: dict[str, Any] | None,
        reason: str,
        status: int | None,
        message: str,
    ) -> None:
        callback = self._settings.on_delivery_error
        if callback is None:
            return
        try:
            record = wire if wire is not None else orjson.loads(body)
            callback(DeliveryError(transaction_id, reason, status, message, record))
        except Exception:
            logger.debug("on_delivery_error raised", exc_info=True)

    def oldest_age(self) -> float:
        """Seconds since the oldest record not yet delivered (or given up on) ended, the
        spool's included; 0 if there is none."""
        now = time.perf_counter()
        oldest = now
        with contextlib.suppress(IndexError):  # the queue may empty under us
            ended = self._queue[0].mono_end
            if ended is not None:
                oldest = ended
        for since in list(self._since.values()):
            oldest = min(oldest, since)
        spool = self._spool
        spooled = spool.oldest_age() if spool is not None else None
        return max(0.0, now - oldest, spooled or 0.0)


class _Senders:
    """The HTTP sender for the current endpoint, made anew when settings change it, and
    the headers every record is sent with."""

    def __init__(self) -> None:
        self._settings: _config.Settings | None = None  # those the two below are for
        self._key: tuple[str, float, int] | None = None
        self._sender: Sender | None = None
        self._headers: dict[str, str] = {}
        self._retired: list[Sender] = []

    def get(self, endpoint: str, settings: _config.Settings) -> tuple[Sender, dict[str, str]]:
        sender = self._sender
        if settings is not self._settings or sender is None:
            key = (endpoint, settings.request_timeout, settings.max_in_flight)
            if sender is None or key != self._key:
                if sender is not None:
                    self._retired.append(sender)  # closed at the end: requests may be in flight
                sender = self._sender = sender_for(endpoint, *key[1:])
                self._key = key
            self._headers = {
                "content-type": "application/json",
                "x-api-key": settings.api_key or "",
            }
            self._settings = settings
        return sender, self._headers

    async def aclose(self) -> None:
        for sender in [*self._retired, *([self._sender] if self._sender else [])]:
            with contextlib.suppress(Exception):
                await sender.aclose()


def _redacted(wire: dict[str, Any]) -> dict[str, Any]:
    """The record as it may appear in a log: credential values masked."""
    subscriber = wire.get("subscriber")
    if not isinstance(subscriber, dict) or "credential" not in subscriber:
        return wire
    credential = dict(subscriber["credential"])
    if "value" in credential:
        credential["value"] = "***"
    return {**wire, "subscriber": {**subscriber, "credential": credential}}


dispatcher = Dispatcher()


def _at_exit() -> None:
    dispatcher.shutdown(dispatcher._settings.shutdown_timeout)


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=dispatcher.after_fork_in_child)

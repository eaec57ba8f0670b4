"""``upload``: ledger records sent to the metering API, several in flight, resumable.

Each record goes as it was stored (its ``wire`` JSON) with its transaction id as the
``Idempotency-Key``, through the package's own sender, answer classification and retry
policy. Rows are marked ``uploaded_at`` in batches as they are stored, so an interrupted
upload loses no progress and a rerun resumes (a record sent again is stored once).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from revenium_ollama_transport import _config
from revenium_ollama_transport._delivery import (
    _Permanent,
    _Transient,
    classify_response,
    retry_after_first,
)
from revenium_ollama_transport._http import Sender, SendError

from . import _rows
from ._progress import Progress

# Rows read from the ledger at a time, and marked uploaded at a time.
_PAGE = 500
_MARK_EVERY = 100


@dataclass(frozen=True)
class Options:
    pending: _rows.Pending = field(default_factory=_rows.Pending)
    concurrency: int = 16
    max_attempts: int = _config.Settings.max_attempts
    max_retry_wait: float = _config.Settings.max_retry_wait


@dataclass
class Outcome:
    total: int
    uploaded: int = 0
    refused: dict[int, int] = field(default_factory=dict)  # HTTP status -> records
    refusal_example: str = ""
    # Why the run stopped before the end: "key" (401/403), "unavailable", "interrupted".
    stopped: str | None = None
    stop_reason: str = ""

    @property
    def refused_count(self) -> int:
        return sum(self.refused.values())

    @property
    def remaining(self) -> int:
        return self.total - self.uploaded - self.refused_count


class Uploader:
    def __init__(
        self,
        connection: sqlite3.Connection,
        sender: Sender,
        api_key: str,
        options: Options,
        progress: Progress,
    ) -> None:
        self._connection = connection
        self._sender = sender
        self._api_key = api_key
        self._headers = {"content-type": "application/json", "x-api-key": api_key}
        self._options = options
        self._progress = progress
        self._settings = dataclasses.replace(
            _config.current(),
            max_attempts=options.max_attempts,
            max_retry_wait=options.max_retry_wait,
        )
        self._marked: list[int] = []
        self._refused: list[tuple[int, int]] = []  # (row id, HTTP status)
        self._tasks: set[asyncio.Task[None]] = set()
        self._outcome = Outcome(0)

    async def run(self, last_id: int, total: int) -> Outcome:
        """Uploads the pending rows with an id up to ``last_id`` (``total`` of them)."""
        self._outcome = outcome = Outcome(total)
        slots = asyncio.Semaphore(self._options.concurrency)
        after = 0
        try:
            while outcome.stopped is None:
                page = _rows.pending_page(
                    self._connection, after, last_id, _PAGE, self._options.pending
                )
                if not page:
                    break
                after = page[-1][0]
                for row_id, transaction_id, wire in page:
                    await slots.acquire()
                    if outcome.stopped is not None:
                        slots.release()
                        break
                    task = asyncio.create_task(self._one(row_id, transaction_id, wire))
                    self._tasks.add(task)
                    task.add_done_callback(self._finished(slots))
            # What is in flight finishes (a refused key or an API that is down answers the
            # others as quickly); an interruption cancels it.
            await asyncio.gather(*list(self._tasks))
        except asyncio.CancelledError:
            outcome.stopped, outcome.stop_reason = "interrupted", "interrupted"
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        finally:
            self._mark()
        return outcome

    def _finished(self, slots: asyncio.Semaphore) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            slots.release()

        return done

    async def _one(self, row_id: int, transaction_id: str, wire: str) -> None:
        outcome = self._outcome
        body = wire.encode()
        headers = self._headers

        async def once() -> None:
            try:
                reply = await self._sender.post(body, headers, transaction_id)
            except SendError as exc:
                raise _Transient(str(exc)) from exc
            classify_response(reply)

        try:
            try:
                await once()
            except _Transient as first:
                if outcome.stopped is not None:
                    return  # no retries once the run is stopping
                await retry_after_first(once, first, self._settings)
        except _Permanent as exc:
            if exc.status in (401, 403):
                self._stop("key", f"HTTP {exc.status}: {self._masked(str(exc))}")
                return
            outcome.refused[exc.status] = outcome.refused.get(exc.status, 0) + 1
            self._refused.append((row_id, exc.status))
            if not outcome.refusal_example:
                reason = self._masked(str(exc))
                outcome.refusal_example = f"{transaction_id}: HTTP {exc.status}: {reason}"
        except _Transient as exc:
            attempts = self._settings.max_attempts
            self._stop("unavailable", f"{attempts} attempt(s), the last: {exc}")
            return
        else:
            outcome.uploaded += 1
            self._marked.append(row_id)
            if len(self._marked) >= _MARK_EVERY:
                self._mark()
        self._progress.update(outcome.uploaded + outcome.refused_count)

    def _stop(self, why: str, reason: str) -> None:
        if self._outcome.stopped is None:
            self._outcome.stopped, self._outcome.stop_reason = why, reason

    def _masked(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _mark(self) -> None:
        marked, self._marked = self._marked, []
        refused, self._refused = self._refused, []
        _rows.mark_uploaded(self._connection, marked, refused, time.time())


def _on_signals(callback: Callable[[], object]) -> Callable[[], None]:
    """SIGINT / SIGTERM call ``callback`` in the loop; returns the undoing function."""
    loop = asyncio.get_running_loop()
    installed: list[int] = []
    for name in ("SIGINT", "SIGTERM"):
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows, other threads
            loop.add_signal_handler(signum, callback)
            installed.append(signum)

    def undo() -> None:
        for signum in installed:
            loop.remove_signal_handler(signum)

    return undo


async def upload(
    connection: sqlite3.Connection,
    sender: Sender,
    api_key: str,
    options: Options,
    progress: Progress,
    last_id: int,
    total: int,
) -> Outcome:
    """Runs the upload; SIGINT / SIGTERM stop it with what is done marked."""
    uploader = Uploader(connection, sender, api_key, options, progress)
    task = asyncio.create_task(uploader.run(last_id, total))

    signalled: list[bool] = []

    def interrupt() -> None:
        if not signalled:  # a second signal must not cut the clean-up short
            signalled.append(True)
            task.cancel()

    undo = _on_signals(interrupt)
    try:
        return await task
    finally:
        undo()
        progress.close()
        await sender.aclose()

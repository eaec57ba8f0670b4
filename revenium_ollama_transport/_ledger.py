"""The local usage ledger: every metering record in a SQLite database of the user's own.

Without a metering API key it is where records go; with one, ``REVENIUM_LEDGER=on`` keeps a
local copy too. Rows are written in batches by the delivery thread, never by the caller.
Several processes may write one ledger at once: WAL journal, a generous busy timeout, a
batch refused as locked tried again, and ``INSERT OR IGNORE`` on the transaction id (a
replayed record, or a batch tried twice, is stored once).

The schema is versioned with ``PRAGMA user_version``; ``_MIGRATIONS[n]`` takes a ledger
from version ``n`` to ``n + 1``, so an old ledger is brought up to date when it is opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from ._paths import user_dir
from ._record import MeteringRecord
from ._stats import counters

logger = logging.getLogger("revenium_ollama_transport")

FILE_NAME = "ledger.sqlite3"

# A writer waits this long for another process's transaction before giving up on a batch.
_BUSY_TIMEOUT_S = 30.0
# A batch refused as locked or busy is tried this many times in all, pausing in between.
_BUSY_ATTEMPTS = 4
_BUSY_PAUSE_S = 0.2


def _busy(exc: BaseException) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


# Columns of ``calls`` filled from a record, in insert order.
COLUMNS: tuple[str, ...] = (
    "transaction_id",
    "started_at",
    "request_time",
    "response_time",
    "completion_start_time",
    "model",
    "operation_type",
    "is_streamed",
    "stop_reason",
    "error_code",
    "error_reason",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "reasoning_tokens",
    "request_duration_ms",
    "time_to_first_token_ms",
    "organization_name",
    "product_name",
    "subscriber_id",
    "subscriber_email",
    "subscription_id",
    "agent",
    "trace_id",
    "task_type",
    "environment",
    "retry_number",
    "total_duration_ns",
    "load_duration_ns",
    "prompt_eval_duration_ns",
    "eval_duration_ns",
    "prompt_eval_cached_count",
    "route",
    "host",
    "sent_live",
    "wire",
    "details",
    "written_at",
)

_MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: the calls table.
    """
    CREATE TABLE calls (
        id INTEGER PRIMARY KEY,
        transaction_id TEXT NOT NULL UNIQUE,
        started_at REAL NOT NULL,            -- epoch seconds of requestTime, for windows
        request_time TEXT NOT NULL,          -- the wire's ISO-8601 strings, as sent
        response_time TEXT NOT NULL,
        completion_start_time TEXT,
        model TEXT NOT NULL,
        operation_type TEXT NOT NULL,
        is_streamed INTEGER NOT NULL,
        stop_reason TEXT NOT NULL,
        error_code INTEGER,
        error_reason TEXT,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        total_tokens INTEGER NOT NULL,
        cache_read_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        request_duration_ms INTEGER NOT NULL,
        time_to_first_token_ms INTEGER,
        organization_name TEXT,
        product_name TEXT,
        subscriber_id TEXT,
        subscriber_email TEXT,
        subscription_id TEXT,
        agent TEXT,
        trace_id TEXT,
        task_type TEXT,
        environment TEXT,
        retry_number INTEGER,
        total_duration_ns INTEGER,           -- Ollama's own timings (native API only)
        load_duration_ns INTEGER,
        prompt_eval_duration_ns INTEGER,
        eval_duration_ns INTEGER,
        prompt_eval_cached_count INTEGER,
        route TEXT NOT NULL,
        host TEXT NOT NULL,
        sent_live INTEGER NOT NULL,          -- 1: a metering API key was set, delivery sent it
        wire TEXT NOT NULL,                  -- the record as the metering API receives it
        details TEXT NOT NULL,               -- what the wire has no field for, as JSON
        written_at REAL NOT NULL,
        uploaded_at REAL                     -- set by `revenium-ollama upload`
    );
    CREATE INDEX calls_started_at ON calls (started_at);
    CREATE INDEX calls_not_uploaded ON calls (id) WHERE uploaded_at IS NULL AND sent_live = 0;
    """,
    # 1 -> 2: records the metering API refused at upload keep the status it answered, and
    # are no longer pending (an upload would only be refused again).
    """
    ALTER TABLE calls ADD COLUMN upload_refused INTEGER;
    DROP INDEX calls_not_uploaded;
    CREATE INDEX calls_not_uploaded ON calls (id)
        WHERE uploaded_at IS NULL AND upload_refused IS NULL AND sent_live = 0;
    """,
)

SCHEMA_VERSION = len(_MIGRATIONS)


class LedgerError(Exception):
    """A ledger that cannot be opened or used: the message names the path and the cause."""


def default_path() -> Path:
    """The user's data directory / revenium-ollama-transport / ledger.sqlite3."""
    return user_dir("data") / FILE_NAME


def resolve_path(setting: str | None) -> Path:
    """``REVENIUM_LEDGER_PATH`` (``~`` expanded), or the default."""
    return Path(os.path.expanduser(setting)) if setting else default_path()


def connect(path: Path, *, create: bool = True) -> sqlite3.Connection:
    """A connection to the ledger at ``path``, migrated to the current schema.

    ``create=False`` (the command's readers) refuses a ledger that does not exist yet.
    Raises ``LedgerError``.
    """
    if not create and not path.exists():
        raise LedgerError(f"no ledger at {path} (metered calls create it)")
    try:
        if create:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Created private: records carry subscriber ids and e-mail addresses.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        connection = sqlite3.connect(
            path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
    except (OSError, sqlite3.Error) as exc:
        raise LedgerError(f"cannot open the ledger at {path}: {exc}") from exc
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        _migrate(connection)
    except sqlite3.Error as exc:
        connection.close()
        raise LedgerError(f"cannot use the ledger at {path}: {exc}") from exc
    except LedgerError:
        connection.close()
        raise
    return connection


def _migrate(connection: sqlite3.Connection) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise LedgerError(
            f"the ledger has schema version {version}, newer than this package's "
            f"{SCHEMA_VERSION}: upgrade revenium-ollama-transport"
        )
    # One writer migrates; the others wait on the lock, then find the work done.
    with write_transaction(connection):
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[step].split(";"):
                if statement.strip():
                    connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, the write lock taken at once (other processes wait for it
    up to the busy timeout): committed at the end, rolled back on any exception."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _epoch(iso: object) -> float:
    if isinstance(iso, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    return time.time()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def row(
    record: MeteringRecord, sent_live: bool, written_at: float, body: bytes | None = None
) -> tuple[Any, ...]:
    """The ``calls`` row of a record, in ``COLUMNS`` order; ``body``: its wire already
    serialised, when the caller has it."""
    wire = record.wire
    details = record.details
    subscriber = wire.get("subscriber")
    if not isinstance(subscriber, dict):
        subscriber = {}
    return (
        record.transaction_id,
        _epoch(wire.get("requestTime")),
        str(wire.get("requestTime", "")),
        str(wire.get("responseTime", "")),
        _text(wire.get("completionStartTime")),
        str(wire.get("model", "unknown")),
        str(wire.get("operationType", "")),
        1 if wire.get("isStreamed") else 0,
        str(wire.get("stopReason", "")),
        _int(wire.get("errorCode")),
        _text(wire.get("errorReason")),
        _int(wire.get("inputTokenCount")) or 0,
        _int(wire.get("outputTokenCount")) or 0,
        _int(wire.get("totalTokenCount")) or 0,
        _int(wire.get("cacheReadTokenCount")) or 0,
        _int(wire.get("reasoningTokenCount")) or 0,
        _int(wire.get("requestDuration")) or 0,
        _int(wire.get("timeToFirstToken")),
        _text(wire.get("organizationName")),
        _text(wire.get("productName")),
        _text(subscriber.get("id")),
        _text(subscriber.get("email")),
        _text(wire.get("subscriptionId")),
        _text(wire.get("agent")),
        _text(wire.get("traceId")),
        _text(wire.get("taskType")),
        _text(wire.get("environment")),
        _int(wire.get("retryNumber")),
        _int(details.get("total_duration")),
        _int(details.get("load_duration")),
        _int(details.get("prompt_eval_duration")),
        _int(details.get("eval_duration")),
        _int(details.get("prompt_eval_cached_count")),
        str(details.get("route", "")),
        str(details.get("host", "")),
        1 if sent_live else 0,
        (body if body is not None else orjson.dumps(wire)).decode(),
        orjson.dumps(details).decode(),
        written_at,
    )


_INSERT = (
    f"INSERT OR IGNORE INTO calls ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"
)


def insert(connection: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> int:
    """Stores ``rows`` in one transaction; returns how many were new."""
    before = connection.total_changes
    with write_transaction(connection):
        connection.executemany(_INSERT, rows)
    return connection.total_changes - before


class LedgerWriter:
    """Writes batches of records, from the delivery thread; opens the ledger on first use.

    A ledger that cannot be written costs its records (counted ``dropped.ledger_error``,
    one warning per path), never a call.
    """

    def __init__(self) -> None:
        self._path: Path | None = None
        self._connection: sqlite3.Connection | None = None
        self._warned: set[Path] = set()
        # Connections opened before a fork: a child must neither use nor close them
        # (closing would checkpoint the parent's WAL under it), so they are kept here.
        self._inherited: list[sqlite3.Connection] = []

    @property
    def path(self) -> Path | None:
        return self._path

    def write(
        self, items: Sequence[tuple[MeteringRecord, bytes]], path: Path, sent_live: bool
    ) -> None:
        """Stores records given with their wire serialised (as delivery has them)."""
        if not items:
            return
        for attempt in range(1, _BUSY_ATTEMPTS + 1):
            try:
                connection = self._open(path)
                now = time.time()
                insert(connection, (row(record, sent_live, now, body) for record, body in items))
                break
            except (LedgerError, sqlite3.Error, OSError) as exc:
                self.close()
                # SQLite answers "locked" at once, without waiting out the busy timeout, in
                # a few cases (several processes opening a new ledger together): try again.
                if attempt < _BUSY_ATTEMPTS and _busy(exc):
                    time.sleep(_BUSY_PAUSE_S * attempt)
                    continue
                counters.add("dropped.ledger_error", len(items))
                if path not in self._warned:
                    self._warned.add(path)
                    logger.warning("local ledger: records not stored: %s", exc)
                return
        counters.add("ledger_written", len(items))

    def _open(self, path: Path) -> sqlite3.Connection:
        if self._connection is not None and self._path == path:
            return self._connection
        self.close()
        self._connection = connect(path)
        self._path = path
        return self._connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def after_fork_in_child(self) -> None:
        if self._connection is not None:
            self._inherited.append(self._connection)
        self._connection = None
        self._path = None

"""The command's queries of the ledger: each reads only the columns it needs, a cursor at a
time (reports stream the rows; uploads and tail page by ``id``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from revenium_ollama_transport import _ledger

from ._report import CallRow
from ._window import Window

# CallRow's fields, in order.
REPORT_COLUMNS = (
    "started_at",
    "model",
    "organization_name",
    "product_name",
    "subscriber_id",
    "agent",
    "trace_id",
    "task_type",
    "stop_reason",
    "error_code",
    "input_tokens",
    "output_tokens",
    "request_duration_ms",
    "time_to_first_token_ms",
    "total_duration_ns",
    "load_duration_ns",
    "prompt_eval_duration_ns",
    "eval_duration_ns",
)

# Every column, in the order export writes them.
ALL_COLUMNS = ("id", *_ledger.COLUMNS, "uploaded_at", "upload_refused")

TAIL_COLUMNS = (
    "id",
    "request_time",
    "model",
    "operation_type",
    "input_tokens",
    "output_tokens",
    "request_duration_ms",
    "stop_reason",
    "organization_name",
    "subscriber_id",
)


def report_rows(connection: sqlite3.Connection, window: Window) -> Iterator[CallRow]:
    where, parameters = window.sql()
    cursor = connection.execute(
        f"SELECT {', '.join(REPORT_COLUMNS)} FROM calls WHERE {where}", parameters
    )
    cursor.arraysize = 1000
    while batch := cursor.fetchmany():
        yield from (CallRow(*row) for row in batch)


def export_rows(connection: sqlite3.Connection, window: Window) -> Iterator[tuple[Any, ...]]:
    """Rows in ``ALL_COLUMNS`` order, by id."""
    where, parameters = window.sql()
    cursor = connection.execute(
        f"SELECT {', '.join(ALL_COLUMNS)} FROM calls WHERE {where} ORDER BY id", parameters
    )
    cursor.arraysize = 1000
    while batch := cursor.fetchmany():
        yield from batch


def tail_after(connection: sqlite3.Connection, after: int) -> list[tuple[Any, ...]]:
    """Rows (``TAIL_COLUMNS``) with an id above ``after``, by id."""
    return connection.execute(
        f"SELECT {', '.join(TAIL_COLUMNS)} FROM calls WHERE id > ? ORDER BY id", (after,)
    ).fetchall()


def tail_last(connection: sqlite3.Connection, count: int) -> list[tuple[Any, ...]]:
    """The last ``count`` rows (``TAIL_COLUMNS``), oldest first."""
    rows = connection.execute(
        f"SELECT {', '.join(TAIL_COLUMNS)} FROM calls ORDER BY id DESC LIMIT ?", (count,)
    ).fetchall()
    rows.reverse()
    return rows


def last_id(connection: sqlite3.Connection) -> int:
    return int(connection.execute("SELECT coalesce(max(id), 0) FROM calls").fetchone()[0])


@dataclass(frozen=True)
class Pending:
    """Which rows ``upload`` sends: never those stored already; those sent live and those
    refused at an earlier upload only when asked."""

    sent_live: bool = False
    refused: bool = False

    def where(self) -> str:
        return (
            "uploaded_at IS NULL"
            + ("" if self.sent_live else " AND sent_live = 0")
            + ("" if self.refused else " AND upload_refused IS NULL")
        )


def count_pending(connection: sqlite3.Connection, pending: Pending) -> int:
    """Rows ``upload`` would send."""
    query = f"SELECT count(*) FROM calls WHERE {pending.where()}"
    return int(connection.execute(query).fetchone()[0])


def pending_page(
    connection: sqlite3.Connection, after: int, up_to: int, limit: int, pending: Pending
) -> list[tuple[int, str, str]]:
    """(id, transaction_id, wire) of up to ``limit`` rows to upload with an id above
    ``after`` and at most ``up_to``, oldest first."""
    query = (
        f"SELECT id, transaction_id, wire FROM calls WHERE {pending.where()} "
        "AND id > ? AND id <= ? ORDER BY id LIMIT ?"
    )
    return connection.execute(query, (after, up_to, limit)).fetchall()


def mark_uploaded(
    connection: sqlite3.Connection,
    ids: Sequence[int],
    refused: Sequence[tuple[int, int]],
    when: float,
) -> None:
    """In one transaction: ``uploaded_at`` of the rows ``ids``, which the API stored, and
    ``upload_refused`` of the rows it refused, as (id, HTTP status)."""
    if not ids and not refused:
        return
    with _ledger.write_transaction(connection):
        connection.executemany(
            "UPDATE calls SET uploaded_at = ?, upload_refused = NULL WHERE id = ?",
            ((when, i) for i in ids),
        )
        connection.executemany(
            "UPDATE calls SET upload_refused = ? WHERE id = ?",
            ((status, i) for i, status in refused),
        )
